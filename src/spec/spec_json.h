/* SPDX-License-Identifier: MPL-2.0 */
/*
 * JSON in and out for instance specs (jansson).
 *
 * Decoding is strict: unknown fields, wrong types and out-of-range numbers
 * are errors, each recorded with the JSON pointer of the field; decoding goes
 * on after an error so one pass reports every problem it can see. Cross-field
 * rules are spec_validate()'s job, not the decoder's.
 *
 * Encoding is stable: the same spec always gives the same bytes (object keys
 * sorted, compact), so encoded specs can be compared and hashed.
 */
#ifndef CELLA_SPEC_SPEC_JSON_H
#define CELLA_SPEC_SPEC_JSON_H

#include <jansson.h>

#include "spec/spec.h"

/* Largest JSON text cella parses from a client or peer. */
#define SPEC_MAX_JSON_TEXT (96u << 20)

/*
 * Parses JSON text strictly (duplicate object keys rejected, size capped).
 * Returns 0 and a new reference in *out, or -EINVAL/-E2BIG with a record
 * naming line and column.
 */
int cella_json_parse(const char *text, size_t len, json_t **out, struct cella_errors *errs);

/*
 * Decodes an InstanceSpec object found at pointer `at` in its document.
 * `version` is the spec version the body was written in
 * (SPEC_VERSION_CURRENT for API bodies): fields introduced later are unknown
 * to it, and fields it predates take their legacy value.
 * Returns 0, or -EINVAL after recording every problem (out is then empty).
 */
int spec_from_json(const json_t *j, const struct jptr *at, unsigned version,
                   struct instance_spec *out, struct cella_errors *errs);

/* Decodes one component body {"type":..., "component":...}; key is copied. */
int spec_component_from_json(const json_t *j, const char *key, const struct jptr *at,
                             unsigned version, struct spec_component *out,
                             struct cella_errors *errs);

/*
 * Decodes the inner object of a component of known kind (the value of
 * "component", or of "spec" in a ReplacementComponent).
 */
int spec_component_fields_from_json(const json_t *j, enum spec_kind kind, const char *key,
                                    const struct jptr *at, unsigned version,
                                    struct spec_component *out, struct cella_errors *errs);

/* New references, or NULL on allocation failure. */
json_t *spec_to_json(const struct instance_spec *s, enum spec_encoding enc);
json_t *spec_component_to_json(const struct spec_component *c, enum spec_encoding enc);
json_t *spec_component_fields_to_json(const struct spec_component *c, enum spec_encoding enc);

/* Stable text (sorted keys, compact, no trailing newline); caller frees. */
char *cella_json_dump(const json_t *j);

/* Convenience: text -> spec (API version) and spec -> stable text. */
int spec_parse(const char *text, size_t len, struct instance_spec *out, struct cella_errors *errs);
char *spec_dump(const struct instance_spec *s, enum spec_encoding enc);

/*
 * The migration wire form: {"spec_version": N, "spec": {every field}}.
 * Reading accepts SPEC_VERSION_OLDEST..SPEC_VERSION_CURRENT and refuses a
 * newer version rather than drop fields it does not know.
 */
json_t *spec_to_wire(const struct instance_spec *s);
int spec_from_wire(const json_t *j, struct instance_spec *out, struct cella_errors *errs);

/* Helpers shared by the other body codecs. */
bool cella_uuid_valid(const char *s);
int cella_json_check_fields(const json_t *obj, const char *const *allowed, size_t n,
                            const struct jptr *at, struct cella_errors *errs);
int cella_json_get_string(const json_t *obj, const char *name, size_t max, bool required,
                          const struct jptr *at, char **out, struct cella_errors *errs);
int cella_json_get_uint(const json_t *obj, const char *name, uint64_t max, bool required,
                        const struct jptr *at, uint64_t *out, struct cella_errors *errs);
int cella_json_get_bool(const json_t *obj, const char *name, bool required, const struct jptr *at,
                        bool *out, struct cella_errors *errs);
int cella_json_expect_object(const json_t *j, const struct jptr *at, struct cella_errors *errs);

#endif

/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The Propolis v5 API bodies that carry instance specs or name instances:
 * InstanceProperties, InstanceEnsureRequest (with its adjacently tagged
 * `init` and the ReplacementComponent map), InstanceSpecGetResponse and
 * InstanceEnsureResponse.
 *
 * Decoding follows spec_json.h: strict (unknown fields are errors), every
 * problem recorded with its JSON pointer, decoding goes on after an error.
 * A decoder that fails leaves its output empty (safe to free, nothing to
 * free). Encoding is stable: cella_json_dump() of the same body always gives
 * the same bytes.
 *
 * Specs inside these bodies are read at SPEC_VERSION_CURRENT (API bodies
 * have no spec version of their own) and written in the encoding the caller
 * asks for; SPEC_ENC_API keeps bodies valid against Propolis's schema.
 */
#ifndef CELLA_SPEC_BODIES_H
#define CELLA_SPEC_BODIES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spec/spec.h"
#include "spec/spec_json.h"
#include "spec/validate.h"

/* Longest src_addr ("host:port", "[v6]:port") accepted in a migration request. */
#define BODY_MAX_ADDR 256

/* ---- InstanceProperties ---- */

/*
 * InstanceMetadata. The three IDs are canonical UUID strings; every string
 * is heap-owned by the enclosing struct instance_properties.
 */
struct instance_metadata {
    char *project_id;
    char *silo_id;
    char *sled_id;
    char *sled_model;
    char *sled_serial;
    uint32_t sled_revision;
};

/* InstanceProperties: who the instance is. All strings heap-owned. */
struct instance_properties {
    char *id; /* UUID */
    char *name;
    char *description;
    struct instance_metadata metadata;
};

/* Frees every string and zeroes *p; accepts NULL and zeroed structs. */
void instance_properties_free(struct instance_properties *p);

/* Deep copy into an uninitialised *dst. 0, or -ENOMEM with *dst zeroed. */
int instance_properties_copy(struct instance_properties *dst,
                             const struct instance_properties *src);

/* Field-by-field equality (NULL strings equal only NULL). */
bool instance_properties_equal(const struct instance_properties *a,
                               const struct instance_properties *b);

/*
 * Decodes an InstanceProperties object found at `at`. Returns 0 (caller
 * frees *out), or -EINVAL after recording every problem (*out zeroed).
 */
int instance_properties_from_json(const json_t *j, const struct jptr *at,
                                  struct instance_properties *out, struct cella_errors *errs);

/* New reference, or NULL on allocation failure. NULL strings encode as "". */
json_t *instance_properties_to_json(const struct instance_properties *p);

/* ---- InstanceState ---- */

enum instance_state {
    INSTANCE_CREATING,
    INSTANCE_STARTING,
    INSTANCE_RUNNING,
    INSTANCE_STOPPING,
    INSTANCE_STOPPED,
    INSTANCE_REBOOTING,
    INSTANCE_MIGRATING,
    INSTANCE_REPAIRING,
    INSTANCE_FAILED,
    INSTANCE_DESTROYED,
    INSTANCE_STATE__COUNT
};

/* "Creating", "Running", ... as on the wire; "unknown" out of range. */
const char *instance_state_name(enum instance_state s);

/* State from its wire name (case-sensitive). 0, or -ENOENT when unknown. */
int instance_state_from_name(const char *name, enum instance_state *out);

/* ---- ReplacementComponent ---- */

/*
 * Kind whose ReplacementComponent tag ("CrucibleStorageBackend", ...) is
 * `tag`. 0, or -ENOENT when no replaceable kind has that tag.
 */
int replacement_kind_from_tag(const char *tag, enum spec_kind *out);

/*
 * Decodes one ReplacementComponent {"component": tag, "spec": {...}} found
 * at `at`; `key` (the map key) is copied into out->comp.key. Returns 0
 * (caller frees with spec_component_free(&out->comp)), or -EINVAL after
 * recording every problem (out->comp zeroed).
 */
int replacement_from_json(const json_t *j, const char *key, const struct jptr *at,
                          struct spec_replacement *out, struct cella_errors *errs);

/*
 * Encodes r as a ReplacementComponent. NULL when r's kind has no
 * replacement tag or on allocation failure.
 */
json_t *replacement_to_json(const struct spec_replacement *r, enum spec_encoding enc);

/* ---- InstanceEnsureRequest ---- */

enum ensure_method {
    ENSURE_METHOD_SPEC,             /* "Spec": build a new VM from `spec` */
    ENSURE_METHOD_MIGRATION_TARGET, /* "MigrationTarget": receive the VM */
};

/*
 * InstanceEnsureRequest. Which members are meaningful depends on `method`:
 *  - ENSURE_METHOD_SPEC: `spec`;
 *  - ENSURE_METHOD_MIGRATION_TARGET: `migration_id` (UUID), `src_addr` and
 *    `replace` (`nreplace` entries, sorted by key, keys unique).
 * The others stay empty. Everything is heap-owned by the request.
 */
struct ensure_request {
    struct instance_properties properties;
    enum ensure_method method;
    struct instance_spec spec;
    char *migration_id;
    char *src_addr;
    size_t nreplace;
    struct spec_replacement *replace;
};

/* Zeroes *r (an empty Spec request). */
void ensure_request_init(struct ensure_request *r);

/* Frees everything *r owns and re-initialises it; accepts NULL. */
void ensure_request_free(struct ensure_request *r);

/* Equality of method, properties and the members that method uses. */
bool ensure_request_equal(const struct ensure_request *a, const struct ensure_request *b);

/*
 * Decodes an InstanceEnsureRequest found at `at`. At most
 * SPEC_MAX_COMPONENTS replacements are accepted. Returns 0 (caller frees
 * with ensure_request_free), or -EINVAL after recording every problem (*out
 * empty).
 */
int ensure_request_from_json(const json_t *j, const struct jptr *at, struct ensure_request *out,
                             struct cella_errors *errs);

/* New reference, or NULL on allocation failure or an unencodable member. */
json_t *ensure_request_to_json(const struct ensure_request *r, enum spec_encoding enc);

/*
 * Text convenience: parses with cella_json_parse (duplicate keys and
 * oversize text rejected) and decodes at the document root. Same returns
 * and ownership as ensure_request_from_json, plus -E2BIG for oversize text.
 */
int ensure_request_parse(const char *text, size_t len, struct ensure_request *out,
                         struct cella_errors *errs);

/* Stable text of r (see cella_json_dump); caller frees. NULL on failure. */
char *ensure_request_dump(const struct ensure_request *r, enum spec_encoding enc);

/* ---- InstanceSpecGetResponse ---- */

enum spec_status {
    SPEC_STATUS_WAITING_FOR_MIGRATION_SOURCE, /* a target before the preamble */
    SPEC_STATUS_PRESENT,                      /* `spec` holds the effective spec */
};

/* InstanceSpecGetResponse; `spec` is empty unless status is PRESENT. */
struct spec_get_response {
    struct instance_properties properties;
    enum instance_state state;
    enum spec_status status;
    struct instance_spec spec;
};

/* Zeroes *r. */
void spec_get_response_init(struct spec_get_response *r);

/* Frees everything *r owns and re-initialises it; accepts NULL. */
void spec_get_response_free(struct spec_get_response *r);

/* Equality of properties, state, status and (when present) the spec. */
bool spec_get_response_equal(const struct spec_get_response *a, const struct spec_get_response *b);

/*
 * Decodes an InstanceSpecGetResponse found at `at` (a client reading a
 * server). Returns 0 (caller frees), or -EINVAL after recording every
 * problem (*out empty).
 */
int spec_get_response_from_json(const json_t *j, const struct jptr *at,
                                struct spec_get_response *out, struct cella_errors *errs);

/* New reference, or NULL on allocation failure. */
json_t *spec_get_response_to_json(const struct spec_get_response *r, enum spec_encoding enc);

/* Text convenience, as ensure_request_parse. */
int spec_get_response_parse(const char *text, size_t len, struct spec_get_response *out,
                            struct cella_errors *errs);

/* Stable text of r; caller frees. NULL on failure. */
char *spec_get_response_dump(const struct spec_get_response *r, enum spec_encoding enc);

/* ---- InstanceEnsureResponse ---- */

/*
 * InstanceEnsureResponse: {"migrate": null} when migration_id is NULL,
 * else {"migrate": {"migration_id": migration_id}}. New reference, or NULL
 * on allocation failure.
 */
json_t *ensure_response_to_json(const char *migration_id);

/* Stable text of the same; caller frees. NULL on failure. */
char *ensure_response_dump(const char *migration_id);

/*
 * Decodes an InstanceEnsureResponse at `at` (a client reading a server).
 * On 0, *migration_id is NULL (no migration) or a heap UUID string the
 * caller frees; -EINVAL after recording every problem (*migration_id NULL).
 */
int ensure_response_from_json(const json_t *j, const struct jptr *at, char **migration_id,
                              struct cella_errors *errs);

#endif

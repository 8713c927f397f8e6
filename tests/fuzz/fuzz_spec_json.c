/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target: arbitrary bytes as a spec body.
 *
 * Beyond "no crash, no leak", it checks properties: a spec that decodes
 * re-encodes to a body that decodes to an equal spec, in both encodings;
 * encoding is byte-stable; validation, the host check and the guest diff of
 * a spec with itself never fail in odd ways.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spec/spec_json.h"
#include "spec/validate.h"

static void roundtrip(const struct instance_spec *s, enum spec_encoding enc)
{
    char *text = spec_dump(s, enc);
    if (!text)
        abort();
    struct instance_spec again;
    struct cella_errors errs = {0};
    if (spec_parse(text, strlen(text), &again, &errs) < 0 || !spec_equal(s, &again))
        abort();
    char *text2 = spec_dump(&again, enc);
    if (!text2 || strcmp(text, text2) != 0)
        abort();
    free(text2);
    free(text);
    spec_free(&again);
    cella_errors_clear(&errs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct instance_spec s;
    struct cella_errors errs = {0};
    if (spec_parse((const char *)data, size, &s, &errs) == 0) {
        spec_validate(&s, &errs);
        spec_check_host_support(&s, &errs);
        struct spec_diff d;
        if (spec_guest_diff(&s, &s, &d) != 0)
            abort();
        spec_diff_free(&d);
        roundtrip(&s, SPEC_ENC_API);
        roundtrip(&s, SPEC_ENC_FULL);
        json_t *wire = spec_to_wire(&s);
        struct instance_spec w;
        if (!wire || spec_from_wire(wire, &w, &errs) < 0 || !spec_equal(&s, &w))
            abort();
        json_decref(wire);
        spec_free(&w);
        spec_free(&s);
    }
    cella_errors_clear(&errs);
    return 0;
}

#!/bin/bash
# Oracle check of cella's ACPI tables with ACPICA's own tools (Debian
# package acpica-tools, installed here if missing; needs root then).
#
# 1. Builds tests/unit/test_acpi standalone (acpi.c, aml.c and the test need
#    nothing else) and runs it with CELLA_ACPI_DUMP_DIR, which makes its
#    test_dump write the tables of three platforms ("minimal", "full",
#    "large") as files.
# 2. For every table: `iasl -d` must disassemble it without errors, and
#    compiling the disassembly again (`iasl -oa`, no optimisations) must give
#    back the same bytes, except the checksum and the compiler id/revision
#    that iasl writes itself. This checks every field offset and every AML
#    encoding against ACPICA's reading of the specification.
# 3. The fields iasl decodes (ports, lengths, flags, APIC entries, ECAM
#    base) must be the ones the platform asked for, and the DSDT disassembly
#    must contain \_S5_, PCI0, _CRS and _PRT.
# 4. acpiexec loads each DSDT and evaluates \_S5, _PRT (128 entries) and the
#    resource templates of every device; ACPICA's resource manager parses
#    them, so a bad descriptor or end tag fails here.
#
# Usage: tests/acpi/check_tables.sh   (env: CC, default cc)
# Prints one line per check and ends with "N passed, N failed"; exit 0 only
# when nothing failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

if ! command -v iasl >/dev/null || ! command -v acpiexec >/dev/null; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "check_tables: acpica-tools missing and not root" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends acpica-tools >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends acpica-tools >/dev/null; }
fi

WORK=$(mktemp -d /tmp/cella-acpi.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   $*"
}
bad() {
    failed=$((failed + 1))
    echo "FAIL $*"
}

"${CC:-cc}" -std=gnu11 -D_GNU_SOURCE -I"$ROOT/src" -o "$WORK/test_acpi" \
    "$ROOT/src/devices/aml.c" "$ROOT/src/devices/acpi.c" "$ROOT/tests/unit/test_acpi.c" -lcmocka
mkdir "$WORK/dump"
if CELLA_ACPI_DUMP_DIR="$WORK/dump" CMOCKA_MESSAGE_OUTPUT=stdout "$WORK/test_acpi" >"$WORK/unit.log" 2>&1; then
    ok "dump (test_acpi)"
else
    cat "$WORK/unit.log"
    bad "dump (test_acpi)"
fi

# Same bytes except the header's checksum (offset 9) and compiler id and
# revision (28..35); cmp -l counts from 1. FACS has no such header.
same_table() {
    local a=$1 b=$2 name=$3
    [[ $(stat -c %s "$a") == $(stat -c %s "$b") ]] || return 1
    if [[ $name == facs ]]; then
        cmp -s "$a" "$b"
    else
        [[ -z $(cmp -l "$a" "$b" | awk '$1 != 10 && ($1 < 29 || $1 > 36)') ]]
    fi
}

# count FILE NAME VALUE: how many decoded fields "NAME : VALUE" iasl printed.
count() {
    grep -cE "^(\[[^]]*\])?[[:space:]]+$2 : $3\$" "$1" || true
}
# expect FILE NAME VALUE [N]: the field must appear N times (default 1).
expect() {
    local n
    n=$(count "$1" "$2" "$3")
    [[ $n == "${4:-1}" ]] || fieldbad+=" [$1: '$2 : $3' x$n, want ${4:-1}]"
}

# What iasl decodes must be what the platform asked for: this catches a
# field written at the wrong offset, which a byte round trip cannot.
check_fields() {
    local plat=$1 ncpus ecam_base
    case $plat in
    minimal) ncpus=1 ecam_base= ;;
    full) ncpus=4 ecam_base=00000000E0000000 ;;
    large) ncpus=255 ecam_base=0000100000000000 ;;
    esac
    fieldbad=""
    expect facp.dsl "SCI Interrupt" 0009
    expect facp.dsl "SMI Command Port" 00000000
    expect facp.dsl "PM1A Event Block Address" 00000600
    expect facp.dsl "PM1A Control Block Address" 00000604
    expect facp.dsl "PM Timer Block Address" 00000608
    expect facp.dsl "GPE0 Block Address" 00000620
    expect facp.dsl "PM1 Event Block Length" 04
    expect facp.dsl "PM1 Control Block Length" 02
    expect facp.dsl "PM Timer Block Length" 04
    expect facp.dsl "GPE0 Block Length" 04
    expect facp.dsl "Boot Flags \(decoded below\)" 0001
    expect facp.dsl "Reset Register Supported \(V2\)" 1
    expect facp.dsl "Hardware Reduced \(V5\)" 0
    expect facp.dsl "Value to cause reset" 06
    expect facp.dsl "Address" 0000000000000CF9
    expect facp.dsl "Address" 0000000000000600
    expect facp.dsl "Address" 0000000000000604
    expect facp.dsl "Address" 0000000000000608
    expect facp.dsl "Address" 0000000000000620
    expect facp.dsl "FADT Minor Revision" 03
    expect facs.dsl "Version" 02
    expect apic.dsl "Local Apic Address" FEE00000
    expect apic.dsl "Subtable Type" "00 \[Processor Local APIC\]" "$ncpus"
    expect apic.dsl "Processor Enabled" 1 "$ncpus"
    expect apic.dsl "Subtable Type" "01 \[I/O APIC\]"
    expect apic.dsl "I/O Apic ID" 00
    expect apic.dsl "Address" FEC00000
    expect apic.dsl "Subtable Type" "02 \[Interrupt Source Override\]" 2
    expect apic.dsl "Interrupt Input LINT" 01
    if [[ -n $ecam_base ]]; then
        expect mcfg.dsl "Base Address" "$ecam_base"
        expect mcfg.dsl "End Bus Number" FF
    elif [[ -e mcfg.dat ]]; then
        fieldbad+=" [MCFG without ECAM]"
    fi
    if [[ -z $fieldbad ]]; then ok "$plat: decoded fields"; else bad "$plat: decoded fields:$fieldbad"; fi
}

for dir in "$WORK"/dump/*/; do
    plat=$(basename "$dir")
    cd "$dir"
    for dat in *.dat; do
        t=${dat%.dat}
        [[ $t == rsdp ]] && continue # iasl cannot disassemble a bare RSDP; test_acpi checks it
        if iasl -d "$dat" >"$t.dis.log" 2>&1 && [[ -s $t.dsl ]] &&
            ! grep -qiE '(^|[^a-z])(error|warning)s?[^a-z]' "$t.dis.log"; then
            ok "$plat/$t: iasl -d"
        else
            cat "$t.dis.log"
            bad "$plat/$t: iasl -d"
            continue
        fi
        mkdir -p rt
        if (cd rt && iasl -oa -p "$t" "../$t.dsl" >"$t.asm.log" 2>&1) &&
            grep -q "0 Errors, 0 Warnings" "rt/$t.asm.log" && same_table "rt/$t.aml" "$dat" "$t"; then
            ok "$plat/$t: recompiled disassembly is byte-identical"
        else
            cat "rt/$t.asm.log" 2>/dev/null || true
            cmp -l "rt/$t.aml" "$dat" 2>&1 | head -20 || true
            bad "$plat/$t: recompiled disassembly differs"
        fi
    done
    check_fields "$plat"
    missing=""
    for want in '_S5_' 'PCI0' '_CRS' '_PRT' 'PNP0A03'; do
        grep -q "$want" dsdt.dsl || missing+=" $want"
    done
    if [[ -z $missing ]]; then ok "$plat/dsdt: names present"; else bad "$plat/dsdt: missing$missing"; fi

    devs=$(grep -oE 'Device \([A-Z0-9_]{4}\)' dsdt.dsl | sed -E 's/Device \((.*)\)/\1/' |
        grep -vE '^C[0-9A-F]{3}$' || true)
    cmds='evaluate \_S5; evaluate \_SB.PCI0._PRT'
    for d in $devs; do
        if [[ $d == PCI0 ]]; then cmds+="; resources \\_SB.PCI0"; else cmds+="; resources \\_SB.$d"; fi
    done
    timeout 120 acpiexec -b "$cmds" dsdt.dat >acpiexec.log 2>&1 || true
    # _SRS does not exist (resources are fixed): that one AE_NOT_FOUND is expected.
    errs=$(grep -E 'AE_[A-Z_]+' acpiexec.log | grep -v 'AcpiSetCurrentResources failed: AE_NOT_FOUND' || true)
    s5=$(grep -c '\[Integer\] = 0000000000000005' acpiexec.log || true)
    prt=$(grep -c 'PCI IRQ Routing Table Package' acpiexec.log || true)
    crs=$(grep -c 'Evaluating _CRS' acpiexec.log || true)
    ndevs=$(echo "$devs" | wc -w)
    if [[ -z $errs && $s5 -ge 2 && $prt == 128 && $crs == "$ndevs" ]]; then
        ok "$plat/dsdt: acpiexec (\\_S5, _PRT x$prt, _CRS of $crs devices)"
    else
        echo "$errs"
        echo "_S5 values: $s5, _PRT entries: $prt, _CRS evaluated: $crs of $ndevs"
        bad "$plat/dsdt: acpiexec"
    fi
    cd "$ROOT"
done

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

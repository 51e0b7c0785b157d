#!/usr/bin/env python3
"""Checks that libmsp.so exports exactly the functions include/msp.h declares (by the `msp_` prefix),
and that the Swift signature test pins every one of them to its declaration.

usage: check_exports.py HEADER LIBRARY SIGNATURE_TEST
"""
import re
import subprocess
import sys


def declared_functions(header_text):
    """Names of the functions declared in a C header (comments and macros ignored)."""
    text = re.sub(r"/\*.*?\*/", "", header_text, flags=re.S)
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
    return set(re.findall(r"\b(msp_\w+)\s*\(", text))


def exported_functions(library):
    """Names of the `msp_` functions a shared library exports."""
    out = subprocess.run(["nm", "-D", "--defined-only", library], check=True, capture_output=True, text=True)
    return {parts[2] for parts in (line.split() for line in out.stdout.splitlines())
            if len(parts) == 3 and parts[1] == "T" and parts[2].startswith("msp_")}


def main(header, library, signature_test):
    declared = declared_functions(open(header).read())
    exported = exported_functions(library)
    pinned = set(re.findall(r"same\(CMSPHeader\.(msp_\w+), MSP\.\1\)", open(signature_test).read()))
    problems = [f"declared in {header} but not exported: {n}" for n in sorted(declared - exported)]
    problems += [f"exported but not declared in {header}: {n}" for n in sorted(exported - declared)]
    problems += [f"not pinned in {signature_test}: {n}" for n in sorted(declared - pinned)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"check_exports: {len(declared)} functions declared, exported and pinned")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

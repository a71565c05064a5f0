#!/usr/bin/env python3
"""Validates JSON files against a JSON Schema.

usage: json_schema_check.py SCHEMA FILE...
Prints one line per file ("FILE: valid" or "FILE: invalid at /pointer: why").
Exit 0: every file valid; 1: some file invalid; 3: jsonschema is not
installed (Debian package python3-jsonschema).
"""
import json
import sys

try:
    import jsonschema
except ImportError:
    print("python3-jsonschema is not installed")
    sys.exit(3)


def main():
    schema = json.load(open(sys.argv[1]))
    validator = jsonschema.validators.validator_for(schema)(schema)
    bad = False
    for path in sys.argv[2:]:
        errors = sorted(validator.iter_errors(json.load(open(path))), key=lambda e: list(e.path))
        if not errors:
            print(f"{path}: valid")
            continue
        bad = True
        for e in errors:
            pointer = "".join(f"/{p}" for p in e.path)
            print(f"{path}: invalid at {pointer or '/'}: {e.message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Extracts the uapi headers from the KVMI patch and generates a C program
that prints every constant, struct size and top-level field offset they
define, one `kind NAME=value` line each, for the ABI test to compare with
proto/.

usage: extract_uapi.py PATCH OUTDIR [--dialect v5|v7]

Writes OUTDIR/include/linux/kvmi.h and OUTDIR/include/asm/kvmi.h (the '+'
lines of the new-file hunks), OUTDIR/include/kvmi_para_added.h (the lines
the patch adds to an existing kvm_para.h), OUTDIR/preimage/<path> (the
context the patch expects in each file it changes) and OUTDIR/abi_dump.c. Fails on a
malformed patch (hunk line counts that do not add up), since `git am` would
too.

The v5 patch (the default) also changes kvm_para.h and defines the
KVMI_ALLOWED_* macros, whose results the dump lists. The v7 dialect has
neither: its patch only adds the two headers.
"""
import os
import re
import sys

# Where each patched kernel path lands in the include tree we compile.
INCLUDE_MAP = {
    "include/uapi/linux/kvmi.h": "include/linux/kvmi.h",
    "arch/x86/include/uapi/asm/kvmi.h": "include/asm/kvmi.h",
}
PARA = "include/uapi/linux/kvm_para.h"


def die(msg):
    sys.exit("extract_uapi.py: " + msg)


def parse_patch(text):
    """Returns {path: {"new": bool, "added": [...], "context": [...]}}."""
    files = {}
    cur = None
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            m = re.match(r"diff --git a/(\S+) b/(\S+)$", line)
            if not m:
                die("bad diff line: " + line)
            cur = files.setdefault(m.group(2), {"new": False, "added": [], "context": [],
                                                "preimage": []})
        elif line.startswith("new file mode") and cur is not None:
            cur["new"] = True
        elif line.startswith("@@ "):
            m = re.match(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", line)
            if not m or cur is None:
                die("bad hunk header: " + line)
            old_n = int(m.group(2)) if m.group(2) is not None else 1
            new_n = int(m.group(4)) if m.group(4) is not None else 1
            if cur["new"] and (old_n != 0 or m.group(3) != "1"):
                die("new-file hunk does not start at line 1: " + line)
            i += 1
            while old_n > 0 or new_n > 0:
                if i >= len(lines):
                    die("hunk runs past the end of the patch")
                body = lines[i]
                if body.startswith("+"):
                    cur["added"].append(body[1:])
                    new_n -= 1
                elif body.startswith("-"):
                    cur["preimage"].append(body[1:])
                    old_n -= 1
                elif body.startswith(" ") or body == "":
                    cur["context"].append(body[1:])
                    cur["preimage"].append(body[1:])
                    old_n -= 1
                    new_n -= 1
                elif body.startswith("\\"):
                    pass  # "\ No newline at end of file"
                else:
                    die("unexpected line in hunk: " + body)
                if old_n < 0 or new_n < 0:
                    die("hunk line counts do not add up")
                i += 1
            continue
        i += 1
    return files


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def constants(lines):
    """Object-like #defines with a value, joined over backslash lines."""
    out = []
    joined = strip_comments("\n".join(lines)).replace("\\\n", " ")
    for line in joined.split("\n"):
        m = re.match(r"\s*#\s*define\s+([A-Za-z_]\w*)(\(?)\s*(.*)$", line)
        if not m or m.group(2) == "(" or not m.group(3).strip():
            continue
        if m.group(1).startswith("_"):
            continue  # include guards
        out.append(m.group(1))
    return out


def function_macros(lines):
    joined = strip_comments("\n".join(lines)).replace("\\\n", " ")
    return re.findall(r"#\s*define\s+([A-Za-z_]\w*)\(", joined)


def parse_body(text, pos, owner):
    """Fields of a struct/union body starting after its '{': returns the
    member paths (nested members as "outer.inner") and the position after
    the closing '}'."""
    fields = []
    stmt_start = pos
    while True:
        m = re.compile(r"[{};]").search(text, pos)
        if not m:
            die("unterminated struct " + owner)
        c = m.group(0)
        if c == "{":
            inner, after = parse_body(text, m.end(), owner)
            nm = re.compile(r"\s*(\w+)\s*;").match(text, after)
            if not nm:
                die("anonymous nested member in struct " + owner)
            fields.append(nm.group(1))
            fields += [nm.group(1) + "." + f for f in inner]
            pos = stmt_start = nm.end()
        elif c == ";":
            stmt = text[stmt_start:m.start()].strip()
            pos = stmt_start = m.end()
            if not stmt:
                continue
            decl = re.match(r"(?:struct\s+\w+|union\s+\w+|unsigned\s+\w+|\w+)\s+(.*)$", stmt,
                            flags=re.S)
            if not decl:
                die("cannot parse field '%s' of struct %s" % (stmt, owner))
            for d in decl.group(1).split(","):
                fm = re.match(r"\s*\**\s*(\w+)", d)
                if not fm:
                    die("cannot parse declarator '%s' of struct %s" % (d, owner))
                fields.append(fm.group(1))
        else:
            return fields, m.end()


def structs(lines):
    """[(struct name, [field paths])] of every top-level struct."""
    text = strip_comments("\n".join(lines))
    out = []
    for m in re.finditer(r"^struct\s+(\w+)\s*\{", text, flags=re.M):
        fields, _ = parse_body(text, m.end(), m.group(1))
        out.append((m.group(1), fields))
    return out


ALLOW_MACROS = ("KVMI_ALLOWED_COMMAND", "KVMI_ALLOWED_VM_EVENT", "KVMI_ALLOWED_VCPU_EVENT")


def main():
    args = sys.argv[1:]
    dialect = "v5"
    if len(args) == 4 and args[2] == "--dialect" and args[3] in ("v5", "v7"):
        dialect = args[3]
        args = args[:2]
    if len(args) != 2:
        die("usage: extract_uapi.py PATCH OUTDIR [--dialect v5|v7]")
    patch, outdir = args
    v5 = dialect == "v5"
    with open(patch, encoding="utf-8") as f:
        files = parse_patch(f.read())
    for path in INCLUDE_MAP:
        if path not in files or not files[path]["new"]:
            die("the patch does not add " + path)
    if v5 and PARA not in files:
        die("the patch does not touch " + PARA)
    if not v5 and set(files) != set(INCLUDE_MAP):
        die("the v7 patch adds the two headers and changes nothing else")

    headers = {}
    for path, dest in INCLUDE_MAP.items():
        headers[dest] = files[path]["added"]
    headers["include/kvmi_para_added.h"] = files[PARA]["added"] if v5 else []
    # What the patch expects to find in the files it changes (context and
    # removed lines), so a test can `git apply --check` it without a tree.
    os.makedirs(os.path.join(outdir, "preimage"), exist_ok=True)
    for path, f in files.items():
        if not f["new"]:
            headers[os.path.join("preimage", path)] = f["preimage"]
    for dest, body in headers.items():
        full = os.path.join(outdir, dest)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        text = "\n".join(body) + "\n"
        # Rewrite only on change, so the build does not redo the dump.
        if not os.path.exists(full) or open(full, encoding="utf-8").read() != text:
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)

    names = []
    for dest in ("include/kvmi_para_added.h", "include/asm/kvmi.h", "include/linux/kvmi.h"):
        names += constants(headers[dest])
    # The KVM_E* codes already in the base tree's kvm_para.h (4.20), which the
    # protocol uses too; the system header carries the same values.
    if v5:
        names += ["KVM_ENOSYS", "KVM_EFAULT", "KVM_EINVAL", "KVM_E2BIG", "KVM_EPERM",
                  "KVM_EOPNOTSUPP"]
    seen = set()
    names = [n for n in names if not (n in seen or seen.add(n))]
    all_lines = headers["include/asm/kvmi.h"] + headers["include/linux/kvmi.h"]
    macros = function_macros(all_lines)
    for expected in ALLOW_MACROS if v5 else ():
        if expected not in macros:
            die("the patch lacks " + expected)
    types = structs(headers["include/asm/kvmi.h"]) + structs(headers["include/linux/kvmi.h"])

    c = []
    c.append("/* Generated by extract_uapi.py from the KVMI uapi patch. */")
    c.append("#include <errno.h>")
    c.append("#include <stddef.h>")
    c.append("#include <stdio.h>")
    if v5:
        c.append("#include <linux/kvm_para.h> /* the base tree's KVM_E* codes */")
        c.append('#include "kvmi_para_added.h"')
    c.append("#include <linux/kvmi.h>")
    c.append("")
    c.append("int main(int argc, char **argv)")
    c.append("{")
    c.append("\tFILE *f;")
    if v5:
        c.append("\tint id, m;")
        c.append("\tstatic const unsigned masks[] = {0xffffffffu, 0u, 0x55555555u, 0xaaaaaaaau,")
        c.append("\t\t\t\t\t 1u << 29, 0x1f8efccau};")
    c.append("\tif (argc != 2 || !(f = fopen(argv[1], \"w\")))")
    c.append("\t\treturn 2;")
    for n in names:
        c.append('\tfprintf(f, "const %s=%%lld\\n", (long long)(%s));' % (n, n))
    for name, fields in types:
        c.append('\tfprintf(f, "size %s=%%zu\\n", sizeof(struct %s));' % (name, name))
        for fld in fields:
            c.append('\tfprintf(f, "offset %s.%s=%%zu\\n", offsetof(struct %s, %s));'
                     % (name, fld, name, fld))
    # The allow macros, over every id a 32-bit int shift can take.
    if v5:
        c.append("\tfor (id = 0; id < 31; id++)")
        c.append("\t\tfor (m = 0; m < (int)(sizeof(masks) / sizeof(masks[0])); m++) {")
        for mac in ALLOW_MACROS:
            c.append('\t\t\tfprintf(f, "macro %s(%%d,0x%%x)=%%d\\n", id, masks[m], !!%s(id, masks[m]));'
                     % (mac, mac))
        c.append("\t\t}")
    c.append("\treturn fclose(f) == 0 ? 0 : 1;")
    c.append("}")
    text = "\n".join(c) + "\n"
    full = os.path.join(outdir, "abi_dump.c")
    if not os.path.exists(full) or open(full, encoding="utf-8").read() != text:
        with open(full, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()

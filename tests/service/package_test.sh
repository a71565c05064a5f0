#!/bin/bash
# The Debian package: packed by cpack from the binaries this build already
# has (no compile), installed with dpkg into an empty root, then checked:
# its files, the installed kvmid and kvmictl running, the unit verified
# against the installed tree, the kvmid user created by the postinst, a
# clean purge, and lintian without errors.
#
# dpkg --root (under fakeroot when not root): dpkg unpacks into the root as into a system; the maintainer
# scripts run with --force-script-chrootless on this host with $DPKG_ROOT
# set (a chroot would need a shell and systemd-sysusers inside the empty
# root), and they honour it. --force-depends: the root holds no libc;
# the installed binaries run with this host's libraries.
# usage: package_test.sh BUILD_DIR MAINTAINER (the configured KVMID_PACKAGE_MAINTAINER)
set -euo pipefail
build=$1
maintainer=$2
for tool in cpack dpkg dpkg-deb fakeroot dpkg-shlibdeps systemd-sysusers lintian python3 man; do
  command -v "$tool" > /dev/null || { echo "$0: $tool is missing (scripts/deps.sh installs it)" >&2; exit 1; }
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/kvmid-package-XXXXXX")
trap 'rm -rf "$dir"' EXIT
fail() { echo "package_test: $*" >&2; exit 1; }

# Packing: each run in its own directory, so parallel runs do not collide
# (the install step also rewrites BUILD_DIR/install_manifest.txt).
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$dir/out" > "$dir/cpack.log" 2>&1 \
  || { cat "$dir/cpack.log"; fail "cpack failed"; }
debs=("$dir"/out/kvmid_*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || fail "expected one kvmid_*.deb in $dir/out"
deb=${debs[0]}
echo "package_test: packed $(basename "$deb")"

control=$(dpkg-deb -f "$deb")
echo "$control"
grep -q '^Package: kvmid$' <<<"$control" || fail "no Package: kvmid"
grep -qxF "Maintainer: $maintainer" <<<"$control" || fail "the Maintainer is not the configured '$maintainer'"
# dpkg-shlibdeps found the libraries the binaries link.
for lib in libc6 liburing2 libsystemd0 libcurl4 libssl3; do
  grep -q "^Depends: .*\b$lib\b" <<<"$control" || fail "Depends lacks $lib"
done

root=$dir/root
# dpkg gives the files to root: not being root, it runs under fakeroot, one
# saved fakeroot session across the install and the purge.
dpkg_in_root() {
  if [ "$(id -u)" -eq 0 ]; then
    dpkg --root="$root" "$@"
  else
    touch "$dir/fakeroot.state"
    fakeroot -i "$dir/fakeroot.state" -s "$dir/fakeroot.state" -- dpkg --root="$root" "$@"
  fi
}
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
dpkg_in_root --force-script-chrootless --force-depends --log=/dev/null \
  -i "$deb" > "$dir/dpkg.log" 2>&1 || { cat "$dir/dpkg.log"; fail "dpkg -i failed"; }
status=$(dpkg_in_root -s kvmid)
grep -q '^Status: install ok installed$' <<<"$status" || { echo "$status"; fail "not installed"; }

for f in usr/sbin/kvmid usr/bin/kvmictl usr/bin/kvmi-sim \
         lib/systemd/system/kvmid.service usr/lib/sysusers.d/kvmid.conf \
         etc/kvmid/kvmid.json usr/share/kvmid/kvmid.schema.json \
         usr/share/man/man8/kvmid.8.gz usr/share/man/man1/kvmictl.1.gz \
         usr/share/man/man1/kvmi-sim.1.gz usr/share/doc/kvmid/copyright \
         usr/share/doc/kvmid/changelog.gz usr/share/doc/kvmid/examples/kvmid.json; do
  [ -f "$root/$f" ] || fail "missing /$f"
done
[ -x "$root/usr/sbin/kvmid" ] || fail "/usr/sbin/kvmid is not executable"
gzip -dc "$root/usr/share/doc/kvmid/changelog.gz" | grep -qF " -- $maintainer  " \
  || fail "the changelog is not signed by '$maintainer'"
# Nothing of the build or the tests: only these top-level directories.
extra=$(dpkg-deb -c "$deb" | awk '{print $6}' | grep -Ev '^\./(usr|etc|lib)(/|$)|^\./$' || true)
[ -z "$extra" ] || fail "unexpected files: $extra"
if dpkg-deb -c "$deb" | grep -Eiq 'test|doctest|fuzz|bench'; then
  dpkg-deb -c "$deb" | grep -Ei 'test|doctest|fuzz|bench'
  fail "test files in the package"
fi
grep -qx '/etc/kvmid/kvmid.json' "$root/var/lib/dpkg/info/kvmid.conffiles" \
  || fail "/etc/kvmid/kvmid.json is not a conffile"

out=$("$root/usr/sbin/kvmid" --version) || fail "installed kvmid --version failed"
grep -q '^kvmid ' <<<"$out" || fail "kvmid --version said: $out"
out=$("$root/usr/bin/kvmictl" --version) || fail "installed kvmictl --version failed"
echo "package_test: installed: $out"
# (It warns that the cookie and token are not there yet: the operator makes them.)
out=$("$root/usr/sbin/kvmid" --check-config "$root/etc/kvmid/kvmid.json" 2>&1) \
  || { echo "$out"; fail "the installed config does not pass kvmid --check-config"; }
# The installed schema accepts the installed config, as the parser does.
python3 "$(dirname "$0")/../support/json_schema_check.py" "$root/usr/share/kvmid/kvmid.schema.json" \
  "$root/etc/kvmid/kvmid.json" || fail "the installed schema refuses the installed config"
for page in man8/kvmid.8.gz man1/kvmictl.1.gz man1/kvmi-sim.1.gz; do
  warn=$(MANWIDTH=80 man --warnings -l "$root/usr/share/man/$page" 2>&1 > /dev/null) \
    || fail "man $page failed"
  [ -z "$warn" ] || fail "man $page warns: $warn"
done

# The postinst made the unit's user (systemd-sysusers into the root).
grep -q '^kvmid:' "$root/etc/passwd" || fail "the postinst created no kvmid user"
grep -q '^kvmid:' "$root/etc/group" || fail "the postinst created no kvmid group"

# The unit as installed, with the installed kvmid and the man page it names.
"$(dirname "$0")/unit_verify.sh" "$root/lib/systemd/system/kvmid.service" \
  "$root/usr/sbin/kvmid" "$root/usr/share/man" || fail "the installed unit does not verify"

# Purge: every file of the package goes, the config included.
dpkg_in_root --force-script-chrootless --force-depends --log=/dev/null \
  --purge kvmid > "$dir/purge.log" 2>&1 || { cat "$dir/purge.log"; fail "dpkg --purge failed"; }
for f in usr/sbin/kvmid lib/systemd/system/kvmid.service etc/kvmid/kvmid.json; do
  [ ! -e "$root/$f" ] || fail "/$f is still there after the purge"
done

# lintian: an error (or lintian failing to run) fails, warnings are shown.
lintian --allow-root --fail-on error --tag-display-limit 0 "$deb" > "$dir/lintian.log" 2>&1 \
  || { cat "$dir/lintian.log"; fail "lintian reports errors"; }
cat "$dir/lintian.log"
echo "package_test: ok"

#!/bin/sh
# install_pkgconfig: install tern to a temporary prefix, build
# examples/client.c the way docs/embedding.md §4 says (the line is read
# from the document, so a wrong line fails here), and run it.
#
#   pkgconfig.sh CMAKE BUILD_DIR SOURCE_DIR
set -eu
cmake=$1 build=$2 src=$3
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tern-install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "install_pkgconfig: $*" >&2; exit 1; }

"$cmake" --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 ||
  { cat "$tmp/install.log" >&2; fail "cmake --install failed"; }
pc=$(find "$tmp/prefix" -name tern.pc | head -n 1)
[ -n "$pc" ] || fail "no tern.pc under $tmp/prefix"
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
unset LD_LIBRARY_PATH || true

inc=$(pkg-config --variable=includedir tern)
for h in tern.h net.h sasl.h version.h; do
  [ -f "$inc/tern/$h" ] || fail "$inc/tern/$h is not installed"
done

# the documented line, with app.c and app replaced
line=$(grep -E '^cc app\.c .*rpath' "$src/docs/embedding.md" | head -n 1)
[ -n "$line" ] || fail "docs/embedding.md has no rpath line"
case $line in
  "cc app.c "*" -o app") ;;
  *) fail "unexpected shape of the documented line: $line" ;;
esac
# A sanitizer build installs an instrumented libtern: its consumer is
# built with the same -fsanitize (TERN_TEST_SANITIZE, from CMake), or the
# ASan runtime would not come first. Nothing else changes.
san=${TERN_TEST_SANITIZE:+-fsanitize=$TERN_TEST_SANITIZE}
cmd=$(printf '%s\n' "$line" |
      sed -e "s|cc app.c |cc $san \"$src/examples/client.c\" |" \
          -e "s|-o app\$|-o \"$tmp/client\"|")
echo "+ $cmd"
(cd "$tmp" && eval "$cmd") || fail "the documented line does not build"

out=$("$tmp/client" --help) || fail "the program does not run: $out"
case $out in
  usage:*) ;;
  *) fail "unexpected --help output: $out" ;;
esac
# It runs from the installed library, not from the build tree.
lib=$(ldd "$tmp/client" | awk '/libtern\.so/ {print $3}')
case $lib in
  "$tmp/prefix/"*) ;;
  *) fail "client uses libtern from '$lib', not from the prefix" ;;
esac

# Without the run path it would not start (unless a libtern.so.0 is
# installed system-wide: then that check says nothing and is skipped).
noline=$(printf '%s\n' "$cmd" |
         sed -e 's| -Wl,-rpath,$([^)]*)||' \
             -e "s|$tmp/client|$tmp/client-norpath|")
(cd "$tmp" && eval "$noline") || fail "building without the rpath failed"
if ! ldconfig -p 2>/dev/null | grep -q 'libtern\.so\.0 '; then
  if "$tmp/client-norpath" --help >/dev/null 2>&1; then
    fail "client without -Wl,-rpath ran: the test proves nothing"
  fi
fi
echo "install_pkgconfig: ok ($lib)"

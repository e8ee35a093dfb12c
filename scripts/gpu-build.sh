#!/usr/bin/env bash
# Builds, on this machine, everything scripts/gpu-check.sh runs on a GPU
# machine (which has no crate registry and maybe no Rust toolchain), into
# .gpu/ (ignored through .git/info/exclude). Then carry `.gpu` with the
# device tool and run `bash scripts/gpu-check.sh .gpu` there.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu
rm -rf "$out" && mkdir -p "$out"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }

# Copies each executable of kind $1 ("test" or "bench") that cargo names in
# its JSON messages (stdin) to $out/$1-<target name>.
copy_executables() {
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == [sys.argv[1]]:
        print(m["target"]["name"], m["executable"])' "$1" \
    | while read -r name exe; do cp "$exe" "$out/$1-$name"; done
}

cargo test --release -p convoy --features cuda --test gpu --test lane --no-run --message-format=json \
  | copy_executables test
# bench-gpu, and the CPU benches whose goals a 2-core machine cannot
# settle: the GPU machine has 16 cores, so gpu-check.sh runs bench-intake
# and bench-peers there too, where the clients get cores of their own.
cargo bench -p convoy --features cuda --bench gpu --bench intake --no-run --message-format=json \
  | copy_executables bench
cargo bench -p convoy-cli --bench peers --no-run --message-format=json | copy_executables bench
cargo build --release -p convoy-cli --features cuda --bin convoy
cargo build --release -p convoy --features cuda --example custom_kernel
cp target/release/convoy "$out/convoy"
cp target/release/examples/custom_kernel "$out/custom_kernel"
cp -r kernels crates/convoy-cli/data "$out/"
ls -la "$out"

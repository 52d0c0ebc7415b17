"""Let the `llamacpp` extra's prebuilt libraries load on glibc 2.34-2.37 (Debian 12, Ubuntu 22.04).

llama-cpp-py-sync 0.11739's libraries were linked against glibc 2.38, but the only symbols they take from
2.38 are the C23 parsing variants `__isoc23_strtol`, `__isoc23_strtoul`, `__isoc23_strtoull` and
`__isoc23_sscanf` (used to parse settings and GGUF metadata, not in any compute path). They differ from the
classic functions only in accepting a `0b` binary prefix. Each such undefined symbol is pointed at the
classic name (the tail of its own name string: `st_name + 9`), made unversioned, and the library's
`GLIBC_2.38` version need is marked weak, so the loader accepts it. Nothing else in the files changes.

    python -m bench.llamacpp_compat            # patches the installed llama_cpp_py_sync, in place

It is a local workaround for `bench llm`, not a dependency of anything: `pip install --force-reinstall
llama-cpp-py-sync==0.11739` restores the original files. Patching twice is a no-op.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import struct
from pathlib import Path

SHT_DYNSYM, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 11, 0x6FFFFFFE, 0x6FFFFFFF
VER_FLG_WEAK = 0x2
VER_NDX_GLOBAL = 1
PREFIX = "__isoc23_"
NEEDED = "GLIBC_2.38"


def patch_library(path: Path) -> list[str]:
    """Rebind `path`'s GLIBC_2.38 symbols to their classic names; returns the names rebound."""
    data = bytearray(path.read_bytes())
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    by_type = {}
    for section in sections:
        by_type.setdefault(section[1], section)
    if not {SHT_DYNSYM, SHT_GNU_VERNEED, SHT_GNU_VERSYM} <= by_type.keys():
        return []
    dynsym, versym, verneed = by_type[SHT_DYNSYM], by_type[SHT_GNU_VERSYM], by_type[SHT_GNU_VERNEED]
    strings = sections[dynsym[6]][4]

    def name_at(offset: int) -> str:
        start = strings + offset
        return data[start : data.index(0, start)].decode()

    index, offset = None, verneed[4]
    for _ in range(verneed[7]):  # sh_info: number of Verneed entries
        _, count, _, aux, following = struct.unpack_from("<HHIII", data, offset)
        aux_offset = offset + aux
        for _ in range(count):
            _, flags, other, name, aux_next = struct.unpack_from("<IHHII", data, aux_offset)
            if name_at(name) == NEEDED:
                index = other
                struct.pack_into("<H", data, aux_offset + 4, flags | VER_FLG_WEAK)
            aux_offset += aux_next
        offset += following
    if index is None:
        return []
    rebound = []
    for i in range(dynsym[5] // 24):
        (version,) = struct.unpack_from("<H", data, versym[4] + 2 * i)
        if version & 0x7FFF != index:
            continue
        (name,) = struct.unpack_from("<I", data, dynsym[4] + 24 * i)
        symbol = name_at(name)
        if not symbol.startswith(PREFIX):
            raise ValueError(f"{path}: {symbol} needs {NEEDED} and has no older equivalent; not patched")
        struct.pack_into("<I", data, dynsym[4] + 24 * i, name + len(PREFIX))
        struct.pack_into("<H", data, versym[4] + 2 * i, VER_NDX_GLOBAL)
        rebound.append(symbol)
    path.write_bytes(data)
    return rebound


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="the library folder (default: installed llama_cpp_py_sync)")
    args = parser.parse_args()
    if args.folder:
        folder = Path(args.folder)
    else:
        spec = importlib.util.find_spec("llama_cpp_py_sync")
        if spec is None or spec.origin is None:
            raise SystemExit("llama_cpp_py_sync is not installed (pip install 'specvoice[llamacpp]')")
        folder = Path(spec.origin).parent
    print(f"glibc here: {platform.libc_ver()[1] or 'unknown'}")
    for library in sorted(folder.glob("*.so*")):
        rebound = patch_library(library)
        print(f"{library.name}: " + (", ".join(rebound) if rebound else f"no {NEEDED} symbols"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Dump a GGUF file as JSON using gguf-py's GGUFReader (the reference reader).

Usage: python3 read_gguf.py FILE.gguf
Prints {"alignment", "data_offset", "fields": [{"name", "types", "value"}],
"tensors": [{"name", "shape_ne", "type", "n_elements", "n_bytes", "data_offset", "hex"}]}.
"""
import json
import sys

try:
    import gguf
    import numpy  # noqa: F401
except ImportError as e:
    print(f"install gguf: pip install gguf numpy ({e})", file=sys.stderr)
    sys.exit(3)


def main(path):
    reader = gguf.GGUFReader(path)
    fields = []
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        value = field.contents()
        fields.append({
            "name": name,
            "types": [int(t) for t in field.types],
            "value": value,
        })
    tensors = []
    for t in reader.tensors:
        tensors.append({
            "name": t.name,
            "shape_ne": [int(d) for d in t.shape],
            "type": int(t.tensor_type),
            "n_elements": int(t.n_elements),
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
            "hex": t.data.tobytes().hex(),
        })
    json.dump({
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "fields": fields,
        "tensors": tensors,
    }, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])

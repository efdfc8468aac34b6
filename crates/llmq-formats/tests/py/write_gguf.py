"""Write a small GGUF file with gguf-py's GGUFWriter, for the reader test.

Usage: python3 write_gguf.py OUT.gguf
Keep the values in sync with `gguf_python.rs::reads_a_file_written_by_gguf_py`.
"""
import sys

try:
    import gguf
    import numpy as np
except ImportError as e:
    print(f"install gguf: pip install gguf numpy ({e})", file=sys.stderr)
    sys.exit(3)


def main(path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-test")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_bool("test.flag", True)
    w.add_uint64("test.big", 2**40 + 7)
    w.add_int8("test.i8", -5)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 0.1)
    w.add_uint16("test.u16", 65535)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "héllo", ""])
    w.add_array("tokenizer.ggml.token_type", [1, 3, -1])
    w.add_array("test.floats", [0.5, -2.25])
    w.add_file_type(15)
    w.add_quantization_version(2)

    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("output_norm.weight", (np.arange(32, dtype=np.float16) / 4).astype(np.float16))
    q8 = np.zeros((3, 34), dtype=np.uint8)
    for r in range(3):
        q8[r, 0:2] = np.frombuffer(np.float16(0.5 * (r + 1)).tobytes(), dtype=np.uint8)
        q8[r, 2:] = (np.arange(32, dtype=np.int8) - 16 + r).view(np.uint8)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.idx", np.array([7, -8, 9], dtype=np.int32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1])

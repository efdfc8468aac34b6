//! Calibrated quantization: imatrix files, GPTQ and AWQ.

//! PLACEHOLDER: shared scale searches (make_qx_quants, make_qkx2/3_quants, make_q3_quants, make_qp_quants, nearest_int). Being written.

/* Byte sizes of ge::DataType values and aa_tensor payloads (shared by common/ and sim/). */
#ifndef AA_COMMON_TENSOR_H
#define AA_COMMON_TENSOR_H

#include "../ascend_async.h"

static inline size_t aa_dtype_size(int32_t dt) {
    switch (dt) {
        case AA_DT_FLOAT: case AA_DT_INT32: case AA_DT_UINT32: return 4;
        case AA_DT_FLOAT16: case AA_DT_INT16: case AA_DT_UINT16: case AA_DT_BF16: return 2;
        case AA_DT_INT8: case AA_DT_UINT8: case AA_DT_BOOL: return 1;
        case AA_DT_INT64: case AA_DT_UINT64: case AA_DT_DOUBLE: return 8;
        default: return 0;
    }
}

/* Logical bytes of a tensor's data: element size times the product of its dims. */
static inline size_t aa_tensor_nbytes(const aa_tensor *t) {
    size_t n = aa_dtype_size(t->dtype);
    for (uint32_t i = 0; i < t->ndim; i++) n *= (size_t)t->dims[i];
    return n;
}

#endif /* AA_COMMON_TENSOR_H */

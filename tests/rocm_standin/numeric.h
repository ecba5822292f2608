/* solidx's ROCm ABI stand-in: element decoding/encoding of the data types the stand-in GEMMs
 * read and write, over host memory. Written for solidx's tests; not AMD code. */
#ifndef SOLIDX_STANDIN_NUMERIC_H
#define SOLIDX_STANDIN_NUMERIC_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* hipDataType values (HIP library_types.h); rocblas_datatype values are mapped onto these. */
enum { T_F32 = 0, T_F16 = 2, T_BF16 = 14, T_E4M3 = 28, T_E4M3_FNUZ = 1000 };

static int type_size(int type) {
    switch (type) {
    case T_F32: return 4;
    case T_F16: case T_BF16: return 2;
    case T_E4M3: case T_E4M3_FNUZ: return 1;
    default: return 0;
    }
}

/* 1 sign, 4 exponent, 3 mantissa bits with the given exponent bias (7: OCP e4m3, 8: fnuz). */
static float decode_e4m3(uint8_t bits, int bias) {
    int sign = bits >> 7, exponent = (bits >> 3) & 0xF, mantissa = bits & 0x7;
    float magnitude = exponent == 0 ? ldexpf((float)mantissa / 8.0f, 1 - bias)
                                    : ldexpf(1.0f + (float)mantissa / 8.0f, exponent - bias);
    return sign ? -magnitude : magnitude;
}

static float decode(const void *base, int type, int64_t i) {
    const uint8_t *p = (const uint8_t *)base + i * type_size(type);
    uint16_t h;
    uint32_t bits;
    float f;
    _Float16 half;
    switch (type) {
    case T_F32: memcpy(&f, p, 4); return f;
    case T_F16: memcpy(&half, p, 2); return (float)half;
    case T_BF16: memcpy(&h, p, 2); bits = (uint32_t)h << 16; memcpy(&f, &bits, 4); return f;
    case T_E4M3: return decode_e4m3(*p, 7);
    case T_E4M3_FNUZ: return decode_e4m3(*p, 8);
    default: return NAN;
    }
}

static void encode(void *base, int type, int64_t i, float value) {
    uint8_t *p = (uint8_t *)base + i * type_size(type);
    uint32_t bits;
    uint16_t h;
    _Float16 half;
    switch (type) {
    case T_F32: memcpy(p, &value, 4); break;
    case T_F16: half = (_Float16)value; memcpy(p, &half, 2); break;
    case T_BF16: /* round to nearest even */
        memcpy(&bits, &value, 4);
        bits += 0x7FFF + ((bits >> 16) & 1);
        h = (uint16_t)(bits >> 16);
        memcpy(p, &h, 2);
        break;
    default: break;
    }
}

/* D(m×n, ldd) = alpha · op(A)·op(B) · scale_a · scale_b (+ beta · C) (+ bias[row]); column-major,
 * op(X) = Xᵀ when trans_X. The plain reference every fake algorithm computes. */
static void reference_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                           float alpha, const void *a, int a_type, int64_t lda,
                           const void *b, int b_type, int64_t ldb, float beta,
                           const void *c, int c_type, int64_t ldc, void *d, int d_type,
                           int64_t ldd, float scale_a, float scale_b,
                           const void *bias, int bias_type) {
    for (int64_t col = 0; col < n; ++col) {
        for (int64_t row = 0; row < m; ++row) {
            double acc = 0.0;
            for (int64_t i = 0; i < k; ++i) {
                int64_t ia = trans_a ? i + row * lda : row + i * lda;
                int64_t ib = trans_b ? col + i * ldb : i + col * ldb;
                acc += (double)decode(a, a_type, ia) * (double)decode(b, b_type, ib);
            }
            float value = alpha * (float)acc * scale_a * scale_b;
            if (beta != 0.0f)
                value += beta * decode(c, c_type, row + col * ldc);
            if (bias)
                value += decode(bias, bias_type, row);
            encode(d, d_type, row + col * ldd, value);
        }
    }
}

#endif

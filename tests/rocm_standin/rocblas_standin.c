/* solidx's rocBLAS ABI stand-in: the subset of rocBLAS's C API that solidx's bindings call, with
 * rocBLAS's prototypes and enum values (rocblas-types.h, rocblas-beta.h), over host memory. Fake
 * solution indices; every one computes the plain reference GEMM. Written for solidx's tests;
 * not AMD code. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "numeric.h"

enum { OK = 0, INVALID_HANDLE = 1, NOT_IMPLEMENTED = 2, INVALID_POINTER = 3, INVALID_SIZE = 4,
       INTERNAL_ERROR = 6, INVALID_VALUE = 11 };
enum { OP_N = 111, OP_T = 112, F16 = 150, F32 = 151, BF16 = 168 };
enum { ALGO_STANDARD = 0, ALGO_SOLUTION_INDEX = 1, FLAG_CHECK_SOLUTION_INDEX = 0x8 };
#define MAGIC 0x50CBu
static const char VERSION[] = "4.2.0.standin";

/* Solution indices: 11 and 22 serve every problem, 33 needs n >= 8, 44 exists but faults. */
static const struct { int32_t index; int32_t min_n; int listed; } SOLUTIONS[] = {
    {11, 1, 1}, {22, 1, 1}, {33, 8, 1}, {44, 1, 0},
};
#define N_SOLUTIONS (sizeof(SOLUTIONS) / sizeof(SOLUTIONS[0]))

typedef struct { unsigned magic; void *stream; } handle_t;

int rocblas_create_handle(handle_t **handle) {
    if (!handle) return INVALID_POINTER;
    *handle = calloc(1, sizeof(handle_t));
    (*handle)->magic = MAGIC;
    return OK;
}

int rocblas_destroy_handle(handle_t *handle) { free(handle); return OK; }

int rocblas_set_stream(handle_t *handle, void *stream) {
    if (!handle || handle->magic != MAGIC) return INVALID_HANDLE;
    handle->stream = stream;
    return OK;
}

int rocblas_get_version_string_size(size_t *size) {
    if (!size) return INVALID_POINTER;
    *size = sizeof VERSION;
    return OK;
}

int rocblas_get_version_string(char *buf, size_t size) {
    if (!buf || size < sizeof VERSION) return INVALID_SIZE;
    memcpy(buf, VERSION, sizeof VERSION);
    return OK;
}

static int hip_type(int type) {
    return type == F16 ? T_F16 : type == BF16 ? T_BF16 : type == F32 ? T_F32 : -1;
}

/* The problems the stand-in solves: 16-bit A = B = C = D types, fp32 compute. */
static int check_problem(const handle_t *handle, int trans_a, int trans_b, int m, int n, int k,
                         int a_type, int b_type, int c_type, int d_type, int compute, int lda,
                         int ldb, int ldc, int ldd) {
    if (!handle || handle->magic != MAGIC) return INVALID_HANDLE;
    if ((trans_a != OP_N && trans_a != OP_T) || (trans_b != OP_N && trans_b != OP_T))
        return INVALID_VALUE;
    if (m < 0 || n < 0 || k < 0 || ldc < m || ldd < m) return INVALID_SIZE;
    if (lda < (trans_a == OP_T ? k : m) || ldb < (trans_b == OP_T ? n : k)) return INVALID_SIZE;
    if (a_type != b_type || c_type != d_type || a_type != c_type || compute != F32
        || (a_type != F16 && a_type != BF16))
        return NOT_IMPLEMENTED;
    return OK;
}

static int serves(size_t i, int n) { return n >= SOLUTIONS[i].min_n; }

int rocblas_gemm_ex_get_solutions(handle_t *handle, int trans_a, int trans_b, int m, int n, int k,
                                  const void *alpha, const void *a, int a_type, int lda,
                                  const void *b, int b_type, int ldb, const void *beta,
                                  const void *c, int c_type, int ldc, void *d, int d_type,
                                  int ldd, int compute, int algo, uint32_t flags, int32_t *list,
                                  int32_t *size) {
    (void)alpha, (void)a, (void)b, (void)beta, (void)c, (void)d, (void)flags;
    int status = check_problem(handle, trans_a, trans_b, m, n, k, a_type, b_type, c_type, d_type,
                               compute, lda, ldb, ldc, ldd);
    if (status != OK) return status;
    if (algo != ALGO_SOLUTION_INDEX) return INVALID_VALUE;
    if (!size) return INVALID_POINTER;
    int count = 0;
    for (size_t i = 0; i < N_SOLUTIONS; ++i) {
        if (!SOLUTIONS[i].listed || !serves(i, n)) continue;
        if (list && count < *size) list[count] = SOLUTIONS[i].index;
        ++count;
    }
    if (!list) *size = count;
    return OK;
}

int rocblas_gemm_ex(handle_t *handle, int trans_a, int trans_b, int m, int n, int k,
                    const void *alpha, const void *a, int a_type, int lda, const void *b,
                    int b_type, int ldb, const void *beta, const void *c, int c_type, int ldc,
                    void *d, int d_type, int ldd, int compute, int algo, int32_t index,
                    uint32_t flags) {
    int status = check_problem(handle, trans_a, trans_b, m, n, k, a_type, b_type, c_type, d_type,
                               compute, lda, ldb, ldc, ldd);
    if (status != OK) return status;
    int which = -1;
    for (size_t i = 0; i < N_SOLUTIONS; ++i)
        if (SOLUTIONS[i].index == index && serves(i, n)) which = (int)i;
    if (algo == ALGO_SOLUTION_INDEX && index > 0 && which < 0) return INVALID_VALUE;
    if (flags & FLAG_CHECK_SOLUTION_INDEX) return OK; /* validity only, nothing computed */
    if (which >= 0 && SOLUTIONS[which].index == 44) return INTERNAL_ERROR;
    if (!alpha || !beta || !a || !b || !d) return INVALID_POINTER;
    reference_gemm(trans_a == OP_T, trans_b == OP_T, m, n, k, *(const float *)alpha,
                   a, hip_type(a_type), lda, b, hip_type(b_type), ldb, *(const float *)beta,
                   c, hip_type(c_type), ldc, d, hip_type(d_type), ldd, 1.0f, 1.0f, NULL, 0);
    return OK;
}

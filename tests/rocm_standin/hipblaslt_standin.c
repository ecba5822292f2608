/* solidx's hipBLASLt ABI stand-in: the subset of hipBLASLt's C API that solidx's bindings call,
 * with hipBLASLt's prototypes, struct layouts and enum values (see gradlib/backends/lt_vendor.py
 * for the sources), over host memory. A few fake algorithms with solution indices; every one
 * computes the plain reference GEMM. Written for solidx's tests; not AMD code. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "numeric.h"

enum { OK = 0, INVALID_VALUE = 3, EXECUTION_FAILED = 5, NOT_SUPPORTED = 7, NULL_HANDLE = 9 };
enum { OP_N = 111, OP_T = 112, COMPUTE_32F = 2, EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4 };
#define VERSION 100042
#define MAGIC 0x51D0u

typedef struct { uint8_t data[16]; size_t max_workspace_bytes; } algo_t;
typedef struct {
    algo_t algo; size_t workspaceSize; int state; float wavesCount; int reserved[4];
} result_t;
_Static_assert(sizeof(algo_t) == 24, "hipblasLtMatmulAlgo_t is 24 bytes");
_Static_assert(sizeof(result_t) == 56, "hipblasLtMatmulHeuristicResult_t is 56 bytes");

typedef struct { unsigned magic; } handle_t;
typedef struct {
    int compute, scale_type, trans_a, trans_b, bias_type;
    uint32_t epilogue;
    const void *bias, *scale[4]; /* A, B, C, D */
} desc_t;
typedef struct { int type; uint64_t rows, cols; int64_t ld; } layout_t;
typedef struct { uint32_t search_mode; uint64_t max_workspace; } pref_t;

/* The fake algorithms: solution index, workspace bytes, fewest tokens they serve. 4004 needs
 * more workspace than solidx grants; 6666 is never offered and faults when run. */
static const struct { int32_t index; size_t workspace; uint64_t min_n; } ALGOS[] = {
    {1001, 0, 1}, {2002, 1u << 20, 1}, {3003, 4u << 20, 8}, {4004, 64u << 20, 1},
    {6666, 0, UINT64_MAX},
};
#define N_ALGOS (sizeof(ALGOS) / sizeof(ALGOS[0]))

static void fill_algo(algo_t *algo, int which) {
    int32_t index = ALGOS[which].index;
    memcpy(algo->data, &index, 4);
    for (int j = 4; j < 16; ++j)
        algo->data[j] = (uint8_t)(index * 7 + j);
    algo->max_workspace_bytes = ALGOS[which].workspace;
}

static int find_algo(const algo_t *algo) { /* -1 unless the whole 24 bytes are one of ours */
    for (size_t i = 0; i < N_ALGOS; ++i) {
        algo_t expected;
        fill_algo(&expected, (int)i);
        if (memcmp(expected.data, algo->data, 16) == 0
            && expected.max_workspace_bytes == algo->max_workspace_bytes)
            return (int)i;
    }
    return -1;
}

int hipblasLtCreate(void **handle) {
    if (!handle) return INVALID_VALUE;
    handle_t *h = malloc(sizeof *h);
    h->magic = MAGIC;
    *handle = h;
    return OK;
}

static int bad_handle(const void *handle) {
    return !handle || ((const handle_t *)handle)->magic != MAGIC;
}

int hipblasLtGetVersion(void *handle, int *version) {
    if (bad_handle(handle)) return NULL_HANDLE;
    *version = VERSION;
    return OK;
}

int hipblasLtMatmulDescCreate(void **desc, int compute, int scale_type) {
    desc_t *d = calloc(1, sizeof *d);
    d->compute = compute, d->scale_type = scale_type, d->trans_a = d->trans_b = OP_N;
    d->epilogue = EPILOGUE_DEFAULT, d->bias_type = -1;
    *desc = d;
    return OK;
}

int hipblasLtMatmulDescDestroy(void *desc) { free(desc); return OK; }

int hipblasLtMatmulDescSetAttribute(void *desc, int attr, const void *buf, size_t size) {
    desc_t *d = desc;
    size_t want = (attr == 3 || (attr >= 5 && attr <= 8)) ? sizeof(void *) : 4;
    if (!buf || attr < 0 || attr > 8 || size != want) return INVALID_VALUE;
    switch (attr) {
    case 0: memcpy(&d->trans_a, buf, 4); break;
    case 1: memcpy(&d->trans_b, buf, 4); break;
    case 2: memcpy(&d->epilogue, buf, 4); break;
    case 3: memcpy(&d->bias, buf, sizeof(void *)); break;
    case 4: memcpy(&d->bias_type, buf, 4); break;
    default: memcpy(&d->scale[attr - 5], buf, sizeof(void *)); break;
    }
    return OK;
}

int hipblasLtMatrixLayoutCreate(void **layout, int type, uint64_t rows, uint64_t cols,
                                int64_t ld) {
    if (type_size(type) == 0) return INVALID_VALUE;
    layout_t *l = malloc(sizeof *l);
    l->type = type, l->rows = rows, l->cols = cols, l->ld = ld;
    *layout = l;
    return OK;
}

int hipblasLtMatrixLayoutDestroy(void *layout) { free(layout); return OK; }

int hipblasLtMatmulPreferenceCreate(void **pref) { *pref = calloc(1, sizeof(pref_t)); return OK; }

int hipblasLtMatmulPreferenceDestroy(void *pref) { free(pref); return OK; }

int hipblasLtMatmulPreferenceSetAttribute(void *pref, int attr, const void *buf, size_t size) {
    pref_t *p = pref;
    if (attr == 0 && size == 4) memcpy(&p->search_mode, buf, 4);
    else if (attr == 1 && size == 8) memcpy(&p->max_workspace, buf, 8);
    else return INVALID_VALUE;
    return OK;
}

static int is_fp8(int type) { return type == T_E4M3 || type == T_E4M3_FNUZ; }

/* NOT_SUPPORTED unless the problem is one the stand-in computes: op(A)ᵀ·op(B) shapes agree. */
static int supported(const desc_t *d, const layout_t *a, const layout_t *b, const layout_t *c,
                     const layout_t *dl) {
    if (d->compute != COMPUTE_32F || d->scale_type != T_F32) return NOT_SUPPORTED;
    if ((d->trans_a != OP_N && d->trans_a != OP_T) || (d->trans_b != OP_N && d->trans_b != OP_T))
        return NOT_SUPPORTED;
    if (d->epilogue != EPILOGUE_DEFAULT && d->epilogue != EPILOGUE_BIAS) return NOT_SUPPORTED;
    if (a->type != b->type || c->type != dl->type) return NOT_SUPPORTED;
    if (is_fp8(a->type) ? dl->type == a->type || is_fp8(dl->type) : dl->type != a->type)
        return NOT_SUPPORTED;
    uint64_t m = d->trans_a == OP_T ? a->cols : a->rows, k = d->trans_a == OP_T ? a->rows : a->cols;
    uint64_t kb = d->trans_b == OP_T ? b->cols : b->rows;
    uint64_t n = d->trans_b == OP_T ? b->rows : b->cols;
    if (k != kb || dl->rows != m || dl->cols != n) return INVALID_VALUE;
    return OK;
}

int hipblasLtMatmulAlgoGetHeuristic(void *handle, void *desc, void *a, void *b, void *c, void *d,
                                    void *pref, int requested, result_t *results, int *returned) {
    if (bad_handle(handle)) return NULL_HANDLE;
    if (requested <= 0 || !results || !returned) return INVALID_VALUE;
    int status = supported(desc, a, b, c, d);
    if (status != OK) return status;
    const layout_t *dl = d;
    int count = 0;
    for (size_t i = 0; i < N_ALGOS && count < requested; ++i) {
        if (ALGOS[i].workspace > ((pref_t *)pref)->max_workspace || dl->cols < ALGOS[i].min_n)
            continue;
        memset(&results[count], 0, sizeof(result_t));
        fill_algo(&results[count].algo, (int)i);
        results[count].workspaceSize = ALGOS[i].workspace;
        results[count].state = OK;
        results[count].wavesCount = 1.0f;
        ++count;
    }
    *returned = count;
    return OK;
}

int hipblasLtMatmul(void *handle, void *desc, const void *alpha, const void *A, void *a,
                    const void *B, void *b, const void *beta, const void *C, void *c, void *D,
                    void *d, const algo_t *algo, void *workspace, size_t workspace_bytes,
                    void *stream) {
    (void)stream;
    if (bad_handle(handle)) return NULL_HANDLE;
    const desc_t *ds = desc;
    const layout_t *la = a, *lb = b, *lc = c, *ld = d;
    int status = supported(ds, la, lb, lc, ld);
    if (status != OK) return status;
    int which = algo ? find_algo(algo) : 0;
    if (which < 0 || ALGOS[which].workspace > workspace_bytes
        || (ALGOS[which].workspace && !workspace))
        return INVALID_VALUE;
    if (ALGOS[which].index == 6666) return EXECUTION_FAILED;
    if (ds->epilogue == EPILOGUE_BIAS && !ds->bias) return INVALID_VALUE;
    float scale_a = ds->scale[0] ? *(const float *)ds->scale[0] : 1.0f;
    float scale_b = ds->scale[1] ? *(const float *)ds->scale[1] : 1.0f;
    int trans_a = ds->trans_a == OP_T, trans_b = ds->trans_b == OP_T;
    int64_t k = trans_a ? (int64_t)la->rows : (int64_t)la->cols;
    reference_gemm(trans_a, trans_b, (int64_t)ld->rows, (int64_t)ld->cols, k,
                   *(const float *)alpha, A, la->type, la->ld, B, lb->type, lb->ld,
                   *(const float *)beta, C, lc->type, lc->ld, D, ld->type, ld->ld,
                   scale_a, scale_b, ds->epilogue == EPILOGUE_BIAS ? ds->bias : NULL,
                   ds->bias_type >= 0 ? ds->bias_type : ld->type);
    return OK;
}

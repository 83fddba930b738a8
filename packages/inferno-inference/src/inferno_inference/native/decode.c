/*
 * Steps of a Llama model on the CPU, one call per step.
 *
 * A step runs M tokens through every layer: one new token of each decoding sequence, and the
 * tokens of prefill chunks. In PyTorch a layer is about twenty small operator calls, each
 * costing a few microseconds of dispatch, and torch's single-row matmuls read the weights at
 * well under the machine's memory bandwidth. Here the whole step is one parallel region: the
 * projections split their output rows across the threads (each thread streams a contiguous run
 * of weight rows once for all M tokens), and the per-token work (norms, rotary embedding,
 * attention) runs between barriers.
 *
 * Numerics: activations and the residual stream stay in fp32; in bf16 mode the weights and the
 * KV cache are bf16 and each projection's input is rounded to bf16 before the dot products,
 * which accumulate in fp32 (as torch's bf16 matmuls do). Int8 weights (per-row scales) take
 * fp32 inputs and scale each row's sum. The file is compiled on the machine
 * that runs it (-march=native); the AVX-512 or AVX2 paths are used where the compiler targets
 * them and portable loops elsewhere.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <stdatomic.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define INFERNO_DECODE_ABI 7

enum { DT_F32 = 0, DT_BF16 = 1 };
/* Projection weight types: fp32 and bf16 as the model; int8 codes with one fp32 scale per row. */
enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };

typedef struct {
    const void* input_norm; /* [hidden] */
    const void* qkv;        /* [(heads + 2 * kv_heads) * head_dim, hidden] */
    const void* o;          /* [hidden, heads * head_dim] */
    const void* post_norm;  /* [hidden] */
    const void* gate_up;    /* [2 * inter, hidden] */
    const void* down;       /* [hidden, inter] */
    void* k_cache;          /* [slots, kv_heads, head_dim] */
    void* v_cache;
    const float* qkv_scale; /* per output row, int8 weights only */
    const float* o_scale;
    const float* gate_up_scale;
    const float* down_scale;
    const float* qkv_bias;  /* [(heads + 2 * kv_heads) * head_dim] fp32, or NULL (Qwen2) */
    const float* o_bias;    /* [hidden] fp32, or NULL */
    const float* q_norm;    /* [head_dim] fp32, or NULL: RMSNorm of each query head (Qwen3) */
    const float* k_norm;    /* [head_dim] fp32, with q_norm: of each key head */
    int64_t no_rope;        /* nonzero: queries and keys are not rotated (SmolLM3's NoPE) */
} layer_t;

typedef struct {
    int64_t hidden, inter, heads, kv_heads, head_dim, vocab, n_layers;
    float eps;
    int32_t dtype;
    int32_t wtype;          /* projection weights: W_F32, W_BF16 or W_I8 */
    const layer_t* layers;
    const void* embed;      /* [vocab, hidden] */
    const void* final_norm; /* [hidden] */
    const void* lm_head;    /* [vocab, hidden] */
    const float* cos;       /* [max_len, head_dim], fp32 */
    const float* sin;       /* signed: first half negated, see rope.py */
    const float* lm_head_scale;
} model_t;

int inferno_decode_abi(void) { return INFERNO_DECODE_ABI; }

/* Which projection kernels this build compiled: the flags decide, so the loader logs it. */
const char* inferno_decode_isa(void) {
#if defined(__AVX512F__) && defined(__AVX512BF16__)
    return "avx512-bf16";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#else
    return "portable";
#endif
}

static inline float bf16_to_f32(uint16_t v) {
    uint32_t u = (uint32_t)v << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, as torch does; NaN stays NaN. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float load(const void* p, int dt, int64_t i) {
    return dt == DT_BF16 ? bf16_to_f32(((const uint16_t*)p)[i]) : ((const float*)p)[i];
}

/*
 * exp(x) within about one ulp (Cephes' expf polynomial) in code the compiler can vectorize,
 * unlike a call into libm: x = n ln2 + r with |r| <= ln2/2, exp(r) by a degree-7 polynomial,
 * 2^n put straight into the exponent bits. Inputs are clamped to the finite range.
 */
#pragma omp declare simd notinbranch
static inline float exp_f32(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
    /* Round to nearest by adding and taking away 1.5 * 2^23: plain arithmetic, where rintf
     * is vectorized for some targets only. */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* Dot products for attention and norms; `omp simd` lets the compiler vectorize the sums. */
static inline float dot_f32(const float* restrict a, const float* restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static inline float dot_f32_bf16(const float* restrict a, const uint16_t* restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * bf16_to_f32(b[i]);
    return acc;
}

/*
 * Attention of one query head over its sequence's cached keys and values (kv head g of the
 * slots listed). The scores take four keys per pass over the query, so four sums build up
 * independently instead of one chain of multiply-adds waiting on the last; the weighted sum of
 * values keeps 64 outputs in vector registers across all the keys instead of reloading and
 * storing them for every key.
 */
static float attn_scores(const float* restrict q, const void* kc, int dt, const int64_t* slots,
                         int64_t len, int64_t nkv, int64_t g, int64_t hd, float scale,
                         float* restrict sc) {
    float mx = -INFINITY;
    int64_t j = 0;
    for (; j + 4 <= len; j += 4) {
        int64_t o0 = (slots[j] * nkv + g) * hd, o1 = (slots[j + 1] * nkv + g) * hd;
        int64_t o2 = (slots[j + 2] * nkv + g) * hd, o3 = (slots[j + 3] * nkv + g) * hd;
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        if (dt == DT_BF16) {
            const uint16_t* k = (const uint16_t*)kc;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int64_t i = 0; i < hd; i++) {
                a0 += q[i] * bf16_to_f32(k[o0 + i]);
                a1 += q[i] * bf16_to_f32(k[o1 + i]);
                a2 += q[i] * bf16_to_f32(k[o2 + i]);
                a3 += q[i] * bf16_to_f32(k[o3 + i]);
            }
        } else {
            const float* k = (const float*)kc;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int64_t i = 0; i < hd; i++) {
                a0 += q[i] * k[o0 + i];
                a1 += q[i] * k[o1 + i];
                a2 += q[i] * k[o2 + i];
                a3 += q[i] * k[o3 + i];
            }
        }
        float a[4] = {a0 * scale, a1 * scale, a2 * scale, a3 * scale};
        for (int t = 0; t < 4; t++) {
            sc[j + t] = a[t];
            mx = a[t] > mx ? a[t] : mx;
        }
    }
    for (; j < len; j++) {
        int64_t off = (slots[j] * nkv + g) * hd;
        float v = dt == DT_BF16 ? dot_f32_bf16(q, (const uint16_t*)kc + off, hd)
                                : dot_f32(q, (const float*)kc + off, hd);
        sc[j] = v * scale;
        mx = sc[j] > mx ? sc[j] : mx;
    }
    return mx;
}

typedef float vf8 __attribute__((vector_size(32)));
typedef uint16_t vu16x8 __attribute__((vector_size(16)));
typedef uint32_t vu32x8 __attribute__((vector_size(32)));

static inline vf8 load8(const void* vc, int dt, int64_t off) {
    vf8 v;
    if (dt == DT_BF16) {
        vu16x8 h;
        memcpy(&h, (const uint16_t*)vc + off, sizeof h);
        vu32x8 wide = __builtin_convertvector(h, vu32x8) << 16;
        memcpy(&v, &wide, sizeof v);
    } else {
        memcpy(&v, (const float*)vc + off, sizeof v);
    }
    return v;
}

/* o[i] = sum_j p[j] * v_j[i] over the len values at slots (kv head g). */
static void attn_values(const void* vc, int dt, const int64_t* slots, int64_t len, int64_t nkv,
                        int64_t g, int64_t hd, const float* restrict p, float* restrict o) {
    int64_t c = 0;
    for (; c + 64 <= hd; c += 64) {
        vf8 acc[8];
        _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) acc[r] = (vf8){0};
        for (int64_t j = 0; j < len; j++) {
            int64_t off = (slots[j] * nkv + g) * hd + c;
            vf8 pj = (vf8){0} + p[j];
            _Pragma("GCC unroll 8") for (int r = 0; r < 8; r++) acc[r] += pj * load8(vc, dt, off + 8 * r);
        }
        memcpy(o + c, acc, sizeof acc);
    }
    if (c == hd) return;
    for (int64_t i = c; i < hd; i++) o[i] = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        int64_t off = (slots[j] * nkv + g) * hd;
        if (dt == DT_BF16) {
            const uint16_t* v = (const uint16_t*)vc + off;
            for (int64_t i = c; i < hd; i++) o[i] += p[j] * bf16_to_f32(v[i]);
        } else {
            const float* v = (const float*)vc + off;
            for (int64_t i = c; i < hd; i++) o[i] += p[j] * v[i];
        }
    }
}

/*
 * Prefill attention in tiles. The tokens of a prefill chunk share their sequence's slot list,
 * token t attending to its first len_t entries, so a tile of consecutive tokens times the query
 * heads of one KV head ("rows") can read each key and value once for all its rows instead of
 * once per query and head. The chunk's keys and values are staged once per layer in fp32
 * blocks of ATT_BK (keys transposed, so one vector holds a query's scores for several keys);
 * the scores and the weighted values are register-blocked products; the softmax is online: a
 * block that raises a row's maximum rescales that row's running sum and output by
 * exp(old - new).
 */
#define ATT_BK 64   /* keys per block */
#define ATT_ROWS 66 /* rows per tile (fewer when a chunk is short) */
#define ATT_RT 6    /* rows per register tile */
#if defined(__AVX512F__)
#define ATT_VW 16
#define ATT_NT 4
#else
#define ATT_VW 8
#define ATT_NT 2
#endif
#define ATT_CW (ATT_VW * ATT_NT) /* columns per register tile; ATT_BK is a multiple */
typedef float vfa __attribute__((vector_size(ATT_VW * sizeof(float))));
typedef int32_t via __attribute__((vector_size(ATT_VW * sizeof(int32_t))));

static inline vfa splat(float x) { return x - (vfa){0}; /* x - 0 is x; 0 + x is not for -0 */ }
static inline vfa select_vfa(via mask, vfa a, vfa b) {
    return (vfa)(((via)a & mask) | ((via)b & ~mask));
}
static inline vfa max_vfa(vfa a, vfa b) { return select_vfa(a > b, a, b); }

/*
 * exp_f32 on a vector, written with vector types so that it does not hang on the vectorizer
 * (gcc 12 left the scalar one's loops scalar on AVX2 until -fno-trapping-math). Rounds to
 * nearest with the same 1.5 * 2^23 trick, exact for the clamped range.
 */
static inline vfa exp_vfa(vfa x) {
    x = max_vfa(x, splat(-87.3f));
    x = select_vfa(x > splat(88.7f), splat(88.7f), x);
    const vfa shift = splat(12582912.0f);
    vfa n = (x * 1.44269504088896341f + shift) - shift;
    vfa r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vfa p = splat(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    via bits = (__builtin_convertvector(n, via) + 127) << 23;
    return p * (vfa)bits;
}

static inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/*
 * c[r, n] = (accumulate ? c[r, n] : 0) + sum_k a[r * lda + k] * b[k * ldb + n] for r < R and
 * n < N, both multiples of the register tile (the callers pad their buffers with zeros).
 */
static void att_gemm(const float* restrict a, int64_t lda, const float* restrict b, int64_t ldb,
                     float* restrict c, int64_t ldc, int64_t R, int64_t N, int64_t K,
                     int accumulate) {
    for (int64_t n = 0; n < N; n += ATT_CW) {
        for (int64_t r = 0; r < R; r += ATT_RT) {
            vfa acc[ATT_RT][ATT_NT];
            _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) {
                    if (accumulate)
                        memcpy(&acc[i][j], c + (r + i) * ldc + n + j * ATT_VW, sizeof(vfa));
                    else
                        acc[i][j] = (vfa){0};
                }
            }
            for (int64_t k = 0; k < K; k++) {
                vfa bv[ATT_NT];
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) {
                    memcpy(&bv[j], b + k * ldb + n + j * ATT_VW, sizeof(vfa));
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
                    /* Keep the row in a register: folded into each multiply-add as a memory
                     * operand, it would be loaded again for every one of the ATT_RT rows. */
                    __asm__("" : "+x"(bv[j]));
#endif
                }
                _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                    vfa av = splat(a[(r + i) * lda + k]);
                    _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) acc[i][j] +=
                        av * bv[j];
                }
            }
            _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++)
                    memcpy(c + (r + i) * ldc + n + j * ATT_VW, &acc[i][j], sizeof(vfa));
            }
        }
    }
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
/*
 * With AVX512-BF16 a bf16 model's tiles multiply bf16 operands (queries and softmax weights
 * rounded to bf16, as torch's bf16 attention does) with the pairwise dot instruction: half the
 * instructions of fp32 multiply-adds, and half the bytes staged.
 */
#define ATT_DPBF16 1

/*
 * att_gemm over bf16 pairs: c[r, n] (+)= sum_k a[r * lda + k] * b(k, n), where b(k, n) is at
 * b[((k / 2) * ldb + n) * 2 + k % 2] (the two k of a pair side by side, as the instruction
 * takes them). K is even.
 */
static void att_gemm_bf16(const uint16_t* restrict a, int64_t lda, const uint16_t* restrict b,
                          int64_t ldb, float* restrict c, int64_t ldc, int64_t R, int64_t N,
                          int64_t K, int accumulate) {
    for (int64_t n = 0; n < N; n += ATT_CW) {
        for (int64_t r = 0; r < R; r += ATT_RT) {
            __m512 acc[ATT_RT][ATT_NT];
            _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) acc[i][j] =
                    accumulate ? _mm512_loadu_ps(c + (r + i) * ldc + n + j * ATT_VW)
                               : _mm512_setzero_ps();
            }
            for (int64_t kp = 0; kp < K / 2; kp++) {
                __m512i bv[ATT_NT];
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) {
                    bv[j] = _mm512_loadu_si512(b + (kp * ldb + n + j * ATT_VW) * 2);
                    __asm__("" : "+v"(bv[j]));
                }
                _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                    int32_t pair;
                    memcpy(&pair, a + (r + i) * lda + 2 * kp, sizeof pair);
                    const __m512i av = _mm512_set1_epi32(pair);
                    _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++) acc[i][j] =
                        _mm512_dpbf16_ps(acc[i][j], (__m512bh)av, (__m512bh)bv[j]);
                }
            }
            _Pragma("GCC unroll 6") for (int i = 0; i < ATT_RT; i++) {
                _Pragma("GCC unroll 4") for (int j = 0; j < ATT_NT; j++)
                    _mm512_storeu_ps(c + (r + i) * ldc + n + j * ATT_VW, acc[i][j]);
            }
        }
    }
}

/* n floats (a multiple of 16) to bf16, rounding to nearest even. */
static inline void att_to_bf16(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i*)(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
}
#endif

/* A thread's buffers for `attn_tile`, carved from one allocation of att_scratch_floats();
 * q2 and p2 are the bf16 queries and weights of the ATT_DPBF16 path. */
typedef struct {
    float *q, *s, *o, *mx, *sum;
    uint16_t *q2, *p2;
} att_scratch_t;

static inline int64_t att_rows_cap(int64_t group) {
    return round_up(group > ATT_ROWS ? group : ATT_ROWS, ATT_RT);
}

static int64_t att_scratch_floats(int64_t hd, int64_t group) {
    int64_t rows = att_rows_cap(group), hdp = round_up(hd, ATT_CW);
    return rows * hd + rows * ATT_BK + rows * hdp + 2 * rows + rows * (hd + ATT_BK + 1) / 2;
}

static att_scratch_t att_scratch(float* base, int64_t hd, int64_t group) {
    int64_t rows = att_rows_cap(group), hdp = round_up(hd, ATT_CW);
    att_scratch_t w;
    w.q = base;
    w.s = w.q + rows * hd;
    w.o = w.s + rows * ATT_BK;
    w.mx = w.o + rows * hdp;
    w.sum = w.mx + rows;
    w.q2 = (uint16_t*)(w.sum + rows);
    w.p2 = w.q2 + rows * hd;
    return w;
}

/*
 * A chunk's keys and values for one KV head, staged once per layer for all its tiles: keys
 * transposed in blocks of ATT_BK (key j0 + i of block j0 / ATT_BK at kt[d * ATT_BK + i] of the
 * block's hd * ATT_BK floats: a product then walks rows 256 bytes apart, not len * 4, which
 * would map them all to a few cache sets) and values as rows of hdp (v[j * hdp + d]), fp32,
 * zero past the chunk's len keys (lp = len rounded up to ATT_BK) and past hd columns.
 */
static void att_stage_block(const void* kc, const void* vc, int dt, const int64_t* slots,
                            int64_t len, int64_t j0, int64_t nkv, int64_t g, int64_t hd,
                            float* kt, float* v) {
    const int64_t hdp = round_up(hd, ATT_CW);
    kt += j0 * hd; /* this block's hd * ATT_BK floats */
#ifdef ATT_DPBF16
    if (dt == DT_BF16) {
        /* bf16 pairs (see att_gemm_bf16): keys paired over d, values over keys; the block's
         * first half of its floats. */
        uint16_t *k2 = (uint16_t*)kt, *v2 = (uint16_t*)(v + j0 * hdp);
        for (int64_t i = 0; i < ATT_BK; i++) {
            const int64_t j = j0 + i;
            const uint16_t* k16 = (const uint16_t*)kc + (j < len ? (slots[j] * nkv + g) * hd : 0);
            const uint16_t* v16 = (const uint16_t*)vc + (j < len ? (slots[j] * nkv + g) * hd : 0);
            for (int64_t d = 0; d < hd; d++) {
                k2[((d / 2) * ATT_BK + i) * 2 + d % 2] = j < len ? k16[d] : 0;
                v2[((i / 2) * hdp + d) * 2 + i % 2] = j < len ? v16[d] : 0;
            }
            for (int64_t d = hd; d < hdp; d++) v2[((i / 2) * hdp + d) * 2 + i % 2] = 0;
        }
        return;
    }
#endif
    for (int64_t j = j0; j < j0 + ATT_BK; j++) {
        const int64_t i = j - j0;
        float* vrow = v + j * hdp;
        if (j < len) {
            const int64_t off = (slots[j] * nkv + g) * hd;
            if (dt == DT_BF16) {
                const uint16_t *k16 = (const uint16_t*)kc + off, *v16 = (const uint16_t*)vc + off;
                for (int64_t d = 0; d < hd; d++) kt[d * ATT_BK + i] = bf16_to_f32(k16[d]);
#pragma omp simd
                for (int64_t d = 0; d < hd; d++) vrow[d] = bf16_to_f32(v16[d]);
            } else {
                const float *k32 = (const float*)kc + off, *v32 = (const float*)vc + off;
                for (int64_t d = 0; d < hd; d++) kt[d * ATT_BK + i] = k32[d];
                memcpy(vrow, v32, (size_t)hd * sizeof(float));
            }
            for (int64_t d = hd; d < hdp; d++) vrow[d] = 0.0f;
        } else {
            for (int64_t d = 0; d < hd; d++) kt[d * ATT_BK + i] = 0.0f;
            memset(vrow, 0, (size_t)hdp * sizeof(float));
        }
    }
}

/*
 * Attention of tokens m0 .. m0 + nt - 1 (one chunk's, in order: token t attends to the first
 * lens[m0 + t] keys) for the query heads of KV head g, over the keys and values staged in kt
 * and v (`att_stage_block`). Writes each row's output to out_f32 (fp32) and to the next
 * projection's input (bf16 if in_bf16).
 */
static void attn_tile(const float* qkv, int64_t qkv_n, const float* kt, const float* v,
                      int dt, const int64_t* lens, int64_t m0, int64_t nt, int64_t nkv,
                      int64_t g, int64_t group, int64_t hd, float scale,
                      const att_scratch_t* w, float* out_f32, void* out_in, int in_bf16) {
#ifdef ATT_DPBF16
    const int pairs = dt == DT_BF16;
#else
    (void)dt;
#endif
    const int64_t R = nt * group, Rp = round_up(R, ATT_RT), hdp = round_up(hd, ATT_CW);
    const int64_t nh = nkv * group, maxlen = lens[m0 + nt - 1];
    for (int64_t r = 0; r < Rp; r++) {
        float* qr = w->q + r * hd;
        if (r < R) {
            const float* src = qkv + (m0 + r / group) * qkv_n + (g * group + r % group) * hd;
            for (int64_t d = 0; d < hd; d++) qr[d] = src[d] * scale;
        } else {
            memset(qr, 0, (size_t)hd * sizeof(float));
        }
        memset(w->o + r * hdp, 0, (size_t)hdp * sizeof(float));
        w->mx[r] = -INFINITY;
        w->sum[r] = 0.0f;
#ifdef ATT_DPBF16
        if (pairs)
            for (int64_t d = 0; d < hd; d++) w->q2[r * hd + d] = f32_to_bf16(qr[d]);
#endif
    }
    via lane0;
    for (int i = 0; i < ATT_VW; i++) lane0[i] = i;
    for (int64_t j0 = 0; j0 < maxlen; j0 += ATT_BK) {
        const int64_t nb = maxlen - j0 < ATT_BK ? maxlen - j0 : ATT_BK;
#ifdef ATT_DPBF16
        if (pairs)
            att_gemm_bf16(w->q2, hd, (const uint16_t*)(kt + j0 * hd), ATT_BK, w->s, ATT_BK, Rp,
                          ATT_BK, hd, 0);
        else
#endif
            att_gemm(w->q, hd, kt + j0 * hd, ATT_BK, w->s, ATT_BK, Rp, ATT_BK, hd, 0);
        for (int64_t r = 0; r < Rp; r++) {
            float* sr = w->s + r * ATT_BK;
            int64_t valid = r < R ? lens[m0 + r / group] - j0 : 0;
            valid = valid < 0 ? 0 : (valid > nb ? nb : valid);
            if (valid == 0) {
                memset(sr, 0, ATT_BK * sizeof(float));
                continue;
            }
            /* Whole vectors over the block; lanes past `valid` are masked out. */
            vfa vmx = splat(w->mx[r]);
            for (int64_t j = 0; j < ATT_BK; j += ATT_VW) {
                vfa x;
                memcpy(&x, sr + j, sizeof x);
                if (j + ATT_VW > valid)
                    x = select_vfa(lane0 + (int32_t)j < (int32_t)valid, x, splat(-INFINITY));
                vmx = max_vfa(vmx, x);
            }
            float mx = vmx[0];
            for (int i = 1; i < ATT_VW; i++) mx = vmx[i] > mx ? vmx[i] : mx;
            const float alpha = w->mx[r] == -INFINITY ? 0.0f : exp_f32(w->mx[r] - mx);
            vfa vsum = (vfa){0};
            for (int64_t j = 0; j < ATT_BK; j += ATT_VW) {
                vfa x;
                memcpy(&x, sr + j, sizeof x);
                x = exp_vfa(x - mx);
                if (j + ATT_VW > valid)
                    x = select_vfa(lane0 + (int32_t)j < (int32_t)valid, x, (vfa){0});
                vsum += x;
                memcpy(sr + j, &x, sizeof x);
            }
            float total = 0.0f;
            for (int i = 0; i < ATT_VW; i++) total += vsum[i];
            w->sum[r] = w->sum[r] * alpha + total;
            w->mx[r] = mx;
            if (alpha != 1.0f) {
                float* orow = w->o + r * hdp;
#pragma omp simd
                for (int64_t d = 0; d < hd; d++) orow[d] *= alpha;
            }
        }
#ifdef ATT_DPBF16
        if (pairs) {
            att_to_bf16(w->s, w->p2, Rp * ATT_BK);
            att_gemm_bf16(w->p2, ATT_BK, (const uint16_t*)(v + j0 * hdp), hdp, w->o, hdp, Rp, hdp,
                          ATT_BK, 1);
        } else
#endif
            att_gemm(w->s, ATT_BK, v + j0 * hdp, hdp, w->o, hdp, Rp, hdp, ATT_BK, 1);
    }
    for (int64_t r = 0; r < R; r++) {
        const int64_t m = m0 + r / group, h = g * group + r % group;
        const float inv = 1.0f / w->sum[r];
        float* o = out_f32 + m * nh * hd + h * hd;
        const float* orow = w->o + r * hdp;
        for (int64_t d = 0; d < hd; d++) o[d] = orow[d] * inv;
        if (in_bf16) {
            uint16_t* dst = (uint16_t*)out_in + m * nh * hd + h * hd;
            for (int64_t d = 0; d < hd; d++) dst[d] = f32_to_bf16(o[d]);
        } else {
            memcpy((float*)out_in + m * nh * hd + h * hd, o, (size_t)hd * sizeof(float));
        }
    }
}

/*
 * Decode attention: one query token, all its heads, over a range of its keys (a long context
 * is split into ranges that threads take separately, then merged). Cache rows (every KV head
 * of a slot) come in blocks of ATT_VW, widened to fp32 once for all the heads; a head's scores
 * for the block are ATT_VW dot products whose lane sums are folded into one vector
 * (`hsum_lanes`), so the softmax and the weighted sum work on whole vectors. The range's
 * running maximum, sum and unnormalized output per head go to `part` for the merge.
 */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define DEC_FAST 1
#define DEC_SPLIT 256    /* keys per work item */
#define DEC_MIN_RANGE 64 /* and at least this many, a multiple of ATT_VW: a range costs a merge */

/* Lane j of the result: the sum of a[j]'s lanes, for ATT_VW vectors a[0 .. ATT_VW). */
static inline vfa hsum_lanes(const vfa* a) {
#if defined(__AVX512F__)
    __m512 t[8], u[4], v[2];
    for (int i = 0; i < 8; i++) {
        __m512 x = (__m512)a[2 * i], y = (__m512)a[2 * i + 1];
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    for (int i = 0; i < 4; i++) {
        __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
        u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* u[i]'s 128-bit lane L holds keys 4i .. 4i + 3 summed over that lane. */
    for (int i = 0; i < 2; i++)
        v[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
    return (vfa)_mm512_add_ps(_mm512_shuffle_f32x4(v[0], v[1], 0x88),
                              _mm512_shuffle_f32x4(v[0], v[1], 0xDD));
#else
    __m256 t[4], u[2];
    for (int i = 0; i < 4; i++) {
        __m256 x = (__m256)a[2 * i], y = (__m256)a[2 * i + 1];
        t[i] = _mm256_add_ps(_mm256_unpacklo_ps(x, y), _mm256_unpackhi_ps(x, y));
    }
    for (int i = 0; i < 2; i++) {
        __m256d x = _mm256_castps_pd(t[2 * i]), y = _mm256_castps_pd(t[2 * i + 1]);
        u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
    }
    return (vfa)_mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                              _mm256_permute2f128_ps(u[0], u[1], 0x31));
#endif
}

/* ATT_VW cache values from element off, as fp32 (bf16 widened in one instruction: gcc splits
 * a generic 16-lane widening into two halves). */
static inline vfa load_kv(const void* base, int dt, int64_t off) {
    vfa v;
    if (dt == DT_BF16) {
        const void* p = (const uint16_t*)base + off;
#if defined(__AVX512F__)
        v = (vfa)_mm512_castsi512_ps(
            _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)), 16));
#else
        v = (vfa)_mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p)), 16));
#endif
    } else {
        memcpy(&v, (const float*)base + off, sizeof v);
    }
    return v;
}

static inline float hmax_vfa(vfa v) {
#if defined(__AVX512F__)
    return _mm512_reduce_max_ps((__m512)v);
#else
    __m128 x = _mm_max_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
#endif
}

static inline float hadd_vfa(vfa v) {
#if defined(__AVX512F__)
    return _mm512_reduce_add_ps((__m512)v);
#else
    __m128 x = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
#endif
}

static void attn_decode_part(const float* q, const void* kc, const void* vc, int dt,
                             const int64_t* slots, int64_t jb, int64_t je, int64_t nkv,
                             int64_t group, int64_t hd, float scale, float* ws, float* part) {
    const int64_t nc = hd / ATT_VW, row = nkv * hd, nh = nkv * group;
    const size_t esz = dt == DT_BF16 ? 2 : 4;
    float *kb = ws, *vb = ws + ATT_VW * row;
    for (int64_t h = 0; h < nh; h++) {
        float* ph = part + h * (hd + 2);
        memset(ph, 0, (size_t)hd * sizeof(float));
        ph[hd] = -INFINITY;
        ph[hd + 1] = 0.0f;
    }
    via lane;
    for (int i = 0; i < ATT_VW; i++) lane[i] = i;
    for (int64_t j0 = jb; j0 < je; j0 += ATT_VW) {
        const int64_t nb = je - j0 < ATT_VW ? je - j0 : ATT_VW;
        /* Whole cache rows (every KV head of a slot, contiguous), widened once. */
        for (int64_t jj = 0; jj < ATT_VW; jj++) {
            float *kr = kb + jj * row, *vr = vb + jj * row;
            if (jj < nb) {
                const int64_t off = slots[j0 + jj] * row;
                if (j0 + ATT_VW + jj < je) {
                    /* The next block's rows: the cache is read from memory, in scattered
                     * blocks of slots, and the loads would otherwise wait on each miss. */
                    const int64_t next = slots[j0 + ATT_VW + jj] * row;
                    for (int64_t b = 0; b < row * (int64_t)esz; b += 64) {
                        __builtin_prefetch((const char*)kc + (size_t)next * esz + b);
                        __builtin_prefetch((const char*)vc + (size_t)next * esz + b);
                    }
                }
                for (int64_t c = 0; c < row; c += ATT_VW) {
                    vfa kv = load_kv(kc, dt, off + c), vv = load_kv(vc, dt, off + c);
                    memcpy(kr + c, &kv, sizeof kv);
                    memcpy(vr + c, &vv, sizeof vv);
                }
            } else {
                memset(kr, 0, (size_t)row * sizeof(float));
                memset(vr, 0, (size_t)row * sizeof(float));
            }
        }
        const via live = lane < (int32_t)nb;
        for (int64_t h = 0; h < nh; h++) {
            const int64_t col = (h / group) * hd; /* this head's KV head in a row */
            const float* qh = q + h * hd;
            float* ph = part + h * (hd + 2);
            vfa acc[ATT_VW];
            for (int jj = 0; jj < ATT_VW; jj++) acc[jj] = (vfa){0};
            for (int64_t c = 0; c < nc; c++) {
                vfa qc;
                memcpy(&qc, qh + c * ATT_VW, sizeof qc);
                _Pragma("GCC unroll 16") for (int jj = 0; jj < ATT_VW; jj++) {
                    vfa kv;
                    memcpy(&kv, kb + jj * row + col + c * ATT_VW, sizeof kv);
                    acc[jj] += qc * kv;
                }
            }
            vfa sv = select_vfa(live, hsum_lanes(acc) * scale, splat(-INFINITY));
            const float mb = hmax_vfa(sv);
            const float mold = ph[hd], mnew = mb > mold ? mb : mold;
            const float alpha =
                mold == mnew ? 1.0f : (mold == -INFINITY ? 0.0f : exp_f32(mold - mnew));
            vfa pv = select_vfa(live, exp_vfa(sv - mnew), (vfa){0});
            const float psum = hadd_vfa(pv);
            float pj[ATT_VW];
            memcpy(pj, &pv, sizeof pj);
            ph[hd + 1] = ph[hd + 1] * alpha + psum;
            ph[hd] = mnew;
            for (int64_t c = 0; c < nc; c++) {
                vfa o;
                memcpy(&o, ph + c * ATT_VW, sizeof o);
                o *= alpha;
                /* All ATT_VW keys, a fixed count: past nb the weights and values are zero. */
                _Pragma("GCC unroll 16") for (int jj = 0; jj < ATT_VW; jj++) {
                    vfa vv;
                    memcpy(&vv, vb + jj * row + col + c * ATT_VW, sizeof vv);
                    o += vv * pj[jj];
                }
                memcpy(ph + c * ATT_VW, &o, sizeof o);
            }
        }
    }
}
#endif

/*
 * Projections read weights packed by `pack_weight` (decoder.py): output rows in blocks of 16
 * (zero rows pad the last block), and inside a block, for each input column (fp32) or pair of
 * columns (bf16), the 16 rows' values side by side, 64 bytes in all. One vector load then holds
 * one column of 16 outputs, multiplied by a broadcast input value: the 16 sums build up in the
 * lanes of one register with no horizontal reduction, and each thread streams its share of the
 * weights front to back in a single pass. Two blocks (32 rows) by up to 8 input rows make one
 * register tile, so each broadcast feeds two multiply-adds and each weight load up to eight.
 */
#define ROWS 16
#define PAIR 32 /* rows per register tile: two blocks */

static inline int64_t padded_rows(int64_t n) { return (n + PAIR - 1) / PAIR * PAIR; }

/* Write a tile's sums (mb input rows by nvalid <= 32 outputs) into y, adding when asked. */
static inline void store_tile(const float* acc, const float* scale, int64_t mb, int64_t nvalid,
                              float* y, int64_t ldy, int accumulate) {
    for (int64_t b = 0; b < mb; b++)
        for (int64_t r = 0; r < nvalid; r++) {
            float v = scale ? acc[b * PAIR + r] * scale[r] : acc[b * PAIR + r];
            y[b * ldy + r] = accumulate ? y[b * ldy + r] + v : v;
        }
}

#if defined(__AVX512F__)
#define TILE_M 8 /* input rows per register tile */
#if defined(__AVX512BF16__)
#define BF16_FMA(acc, w, xpair) _mm512_dpbf16_ps((acc), (__m512bh)(w), (__m512bh)(xpair))
#else
/* No bf16 dot instruction: split the (even, odd) column pairs and widen them to fp32. */
static inline __m512 bf16_fma_widen(__m512 acc, __m512i w, __m512i xpair) {
    __m512 w_even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    __m512 w_odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000)));
    __m512 x_even = _mm512_castsi512_ps(_mm512_slli_epi32(xpair, 16));
    __m512 x_odd = _mm512_castsi512_ps(_mm512_and_si512(xpair, _mm512_set1_epi32((int)0xffff0000)));
    return _mm512_fmadd_ps(w_odd, x_odd, _mm512_fmadd_ps(w_even, x_even, acc));
}
#define BF16_FMA(acc, w, xpair) bf16_fma_widen((acc), (w), (xpair))
#endif

static inline __m512 fma_f32(__m512 acc, __m512 w, __m512 x) { return _mm512_fmadd_ps(w, x, acc); }
static inline __m512 bcast_f32(const float* x, int64_t k) { return _mm512_set1_ps(x[k]); }
static inline __m512i load_bf16_pairs(const uint16_t* w) { return _mm512_loadu_si512(w); }
/* Input columns k = 2s and 2s + 1 as one 32-bit lane, repeated: the bf16 dot's operand. */
static inline __m512i bcast_bf16_pair(const uint16_t* x, int64_t s) {
    int32_t pair;
    memcpy(&pair, x + 2 * s, sizeof pair);
    return _mm512_set1_epi32(pair);
}
static inline __m512 bf16_fma(__m512 acc, __m512i w, __m512i x) { return BF16_FMA(acc, w, x); }
/* 16 int8 codes widened to fp32 (the per-row scale is applied to the sums). */
static inline __m512 load_i8_codes(const int8_t* w) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)w)));
}

/*
 * One register tile: two 16-row blocks by MB input rows. Each column step loads a vector of each
 * block (LOAD), broadcasts one input value (or bf16 pair) per input row (BCAST) and multiplies
 * into the MB x 2 accumulators (FMA). STEP is the elements a step advances in the packed block.
 */
#define DEFINE_TILE_KIND(NAME, W_T, X_T, V_T, XV_T, STEPS, STEP, LOAD, BCAST, FMA, MB)            \
    static void NAME##_##MB(const W_T* w, const X_T* x, int64_t K, float* out) {                 \
        __m512 a0[MB], a1[MB];                                                                  \
        for (int b = 0; b < MB; b++) a0[b] = a1[b] = _mm512_setzero_ps();                      \
        const W_T* w1 = w + K * ROWS;                                                           \
        for (int64_t s = 0; s < (STEPS); s++) {                                                 \
            V_T v0 = LOAD(w + s * (STEP)), v1 = LOAD(w1 + s * (STEP));                          \
            for (int b = 0; b < MB; b++) {                                                      \
                XV_T xb = BCAST(x + b * K, s);                                                  \
                a0[b] = FMA(a0[b], v0, xb);                                                     \
                a1[b] = FMA(a1[b], v1, xb);                                                     \
            }                                                                                   \
        }                                                                                       \
        for (int b = 0; b < MB; b++) {                                                          \
            _mm512_storeu_ps(out + b * PAIR, a0[b]);                                            \
            _mm512_storeu_ps(out + b * PAIR + ROWS, a1[b]);                                     \
        }                                                                                       \
    }
#define DEFINE_TILE(MB)                                                                          \
    DEFINE_TILE_KIND(tile_f32, float, float, __m512, __m512, K, ROWS, _mm512_loadu_ps,          \
                     bcast_f32, fma_f32, MB)                                                    \
    DEFINE_TILE_KIND(tile_bf16, uint16_t, uint16_t, __m512i, __m512i, K / 2, 2 * ROWS,          \
                     load_bf16_pairs, bcast_bf16_pair, bf16_fma, MB)                            \
    DEFINE_TILE_KIND(tile_i8, int8_t, float, __m512, __m512, K, ROWS, load_i8_codes, bcast_f32, \
                     fma_f32, MB)
DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)
DEFINE_TILE(4)
DEFINE_TILE(5)
DEFINE_TILE(6)
DEFINE_TILE(7)
DEFINE_TILE(8)

typedef void (*tile_f32_fn)(const float*, const float*, int64_t, float*);
typedef void (*tile_bf16_fn)(const uint16_t*, const uint16_t*, int64_t, float*);
typedef void (*tile_i8_fn)(const int8_t*, const float*, int64_t, float*);
static const tile_f32_fn TILES_F32[9] = {0,         tile_f32_1, tile_f32_2, tile_f32_3, tile_f32_4,
                                         tile_f32_5, tile_f32_6, tile_f32_7, tile_f32_8};
static const tile_bf16_fn TILES_BF16[9] = {0,          tile_bf16_1, tile_bf16_2,
                                           tile_bf16_3, tile_bf16_4, tile_bf16_5,
                                           tile_bf16_6, tile_bf16_7, tile_bf16_8};

static const tile_i8_fn TILES_I8[9] = {0,        tile_i8_1, tile_i8_2, tile_i8_3, tile_i8_4,
                                       tile_i8_5, tile_i8_6, tile_i8_7, tile_i8_8};

static void tile(const void* w, int wt, const void* x, int64_t mb, int64_t K, float* out) {
    if (wt == W_BF16)
        TILES_BF16[mb]((const uint16_t*)w, (const uint16_t*)x, K, out);
    else if (wt == W_I8)
        TILES_I8[mb]((const int8_t*)w, (const float*)x, K, out);
    else
        TILES_F32[mb]((const float*)w, (const float*)x, K, out);
}
#elif defined(__AVX2__) && defined(__FMA__)
/*
 * AVX2 (eight lanes, sixteen vector registers): a 16-row block is two vectors per column, so a
 * 32-row tile by eight input rows would need 32 accumulators. Here a register tile is one block
 * by up to six input rows: twelve accumulator chains, two weight vectors and one broadcast fill
 * the sixteen registers, and twelve chains keep both multiply-add pipes busy where eight left
 * them waiting on latency. `tile` walks the 32-row tile's two blocks in turn, and `project`
 * hands it six input rows at a time.
 */
#define MB_AVX2 6
#define TILE_M MB_AVX2

/* The (even, odd) bf16 columns of each 32-bit lane, widened to fp32. */
static inline __m256 bf16_even(__m256i w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
static inline __m256 bf16_odd(__m256i w) {
    return _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32((int)0xffff0000)));
}
static inline __m256 i8_codes8(const int8_t* w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)w)));
}

/*
 * One register tile: sums of MB input rows against one 16-row block. COLUMNS walks the block,
 * handing each column k (two vectors of eight rows, widened to fp32) to COLUMN, which
 * broadcasts input k of each row with BC.
 */
#define BCAST_F32(p) _mm256_broadcast_ss(p)
#define BCAST_BF16(p) _mm256_set1_ps(bf16_to_f32(*(p)))
#define COLUMN(BC, w0, w1, k)                                                                  \
    do {                                                                                       \
        __m256 w0_ = (w0), w1_ = (w1);                                                         \
        _Pragma("GCC unroll 6") for (int b = 0; b < MB; b++) {                                 \
            __m256 xb = BC(x + b * K + (k));                                                   \
            lo[b] = _mm256_fmadd_ps(w0_, xb, lo[b]);                                           \
            hi[b] = _mm256_fmadd_ps(w1_, xb, hi[b]);                                           \
        }                                                                                      \
    } while (0)
/* fp32 and int8 blocks hold column k's 16 rows side by side. */
#define COLUMNS_F32(w, BC)                                                                     \
    for (int64_t k = 0; k < K; k++)                                                            \
        COLUMN(BC, _mm256_loadu_ps(w + k * ROWS), _mm256_loadu_ps(w + k * ROWS + 8), k)
#define COLUMNS_I8(w, BC)                                                                      \
    for (int64_t k = 0; k < K; k++)                                                            \
        COLUMN(BC, i8_codes8(w + k * ROWS), i8_codes8(w + k * ROWS + 8), k)
/* bf16 blocks hold column pairs (k, k+1) of each row: the even and odd halves of each lane. */
#define COLUMNS_BF16(w, BC)                                                                    \
    for (int64_t s = 0; s < K / 2; s++) {                                                      \
        const __m256i* p = (const __m256i*)(w + s * 2 * ROWS);                                 \
        COLUMN(BC, bf16_even(_mm256_loadu_si256(p)), bf16_even(_mm256_loadu_si256(p + 1)),     \
               2 * s);                                                                         \
        COLUMN(BC, bf16_odd(_mm256_loadu_si256(p)), bf16_odd(_mm256_loadu_si256(p + 1)),       \
               2 * s + 1);                                                                     \
    }
#define DEFINE_BLOCK_KIND(NAME, W_T, X_T, COLUMNS, BC, MB_)                                    \
    static void NAME##_##MB_(const W_T* w, const X_T* x, int64_t K, float* out) {              \
        enum { MB = MB_ };                                                                     \
        __m256 lo[MB], hi[MB];                                                                 \
        _Pragma("GCC unroll 6") for (int b = 0; b < MB; b++) lo[b] = hi[b] = _mm256_setzero_ps(); \
        COLUMNS(w, BC);                                                                        \
        _Pragma("GCC unroll 6") for (int b = 0; b < MB; b++) {                                 \
            _mm256_storeu_ps(out + b * PAIR, lo[b]);                                           \
            _mm256_storeu_ps(out + b * PAIR + 8, hi[b]);                                       \
        }                                                                                      \
    }
/* block_bf16 takes the bf16 inputs widened to fp32 beforehand; block_bf16x widens each one
 * where it is broadcast. */
#define DEFINE_BLOCK(MB)                                                                       \
    DEFINE_BLOCK_KIND(block_f32, float, float, COLUMNS_F32, BCAST_F32, MB)                     \
    DEFINE_BLOCK_KIND(block_i8, int8_t, float, COLUMNS_I8, BCAST_F32, MB)                      \
    DEFINE_BLOCK_KIND(block_bf16, uint16_t, float, COLUMNS_BF16, BCAST_F32, MB)                \
    DEFINE_BLOCK_KIND(block_bf16x, uint16_t, uint16_t, COLUMNS_BF16, BCAST_BF16, MB)
DEFINE_BLOCK(1)
DEFINE_BLOCK(2)
DEFINE_BLOCK(3)
DEFINE_BLOCK(4)
DEFINE_BLOCK(5)
DEFINE_BLOCK(6)

typedef void (*block_f32_fn)(const float*, const float*, int64_t, float*);
typedef void (*block_bf16_fn)(const uint16_t*, const float*, int64_t, float*);
typedef void (*block_bf16x_fn)(const uint16_t*, const uint16_t*, int64_t, float*);
typedef void (*block_i8_fn)(const int8_t*, const float*, int64_t, float*);
#define BLOCK_TABLE(NAME) {0, NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6}
static const block_f32_fn BLOCKS_F32[MB_AVX2 + 1] = BLOCK_TABLE(block_f32);
static const block_bf16_fn BLOCKS_BF16[MB_AVX2 + 1] = BLOCK_TABLE(block_bf16);
static const block_bf16x_fn BLOCKS_BF16X[MB_AVX2 + 1] = BLOCK_TABLE(block_bf16x);
static const block_i8_fn BLOCKS_I8[MB_AVX2 + 1] = BLOCK_TABLE(block_i8);

/*
 * With five or six input rows, bf16 inputs are widened to fp32 once per tile, into a buffer of
 * the calling thread (kept for the thread's life, a tile's inputs at most): widening them
 * where they are broadcast costs scalar work per row and column that competes with the
 * multiply-adds: 4-18% of a prefill's matmul time in interleaved runs. With fewer rows the weights' memory traffic hides that
 * work and the widening pass costs more than it saves. NULL when the buffer cannot grow: the
 * caller then widens in the loop.
 */
#define WIDEN_MIN_ROWS 5
static const float* widen_rows(const uint16_t* x, int64_t n) {
#ifdef INFERNO_NO_WIDEN_BUFFER /* test builds: take the caller's fallback */
    (void)x;
    (void)n;
    return NULL;
#else
    static _Thread_local float* buf = NULL;
    static _Thread_local int64_t cap = 0;
    if (n > cap) {
        float* grown = (float*)realloc(buf, (size_t)n * sizeof(float));
        if (grown == NULL) return NULL;
        buf = grown;
        cap = n;
    }
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i*)(x + i));
        _mm256_storeu_ps(buf + i,
                         _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; i++) buf[i] = bf16_to_f32(x[i]);
    return buf;
#endif
}

static void tile(const void* w, int wt, const void* x, int64_t mb, int64_t K, float* out) {
    const float* xf = (const float*)x;
    if (wt == W_BF16) xf = mb >= WIDEN_MIN_ROWS ? widen_rows((const uint16_t*)x, mb * K) : NULL;
    for (int64_t half = 0; half < 2; half++) {
        float* o = out + half * ROWS;
        if (wt == W_BF16 && xf == NULL)
            BLOCKS_BF16X[mb]((const uint16_t*)w + half * K * ROWS, (const uint16_t*)x, K, o);
        else if (wt == W_BF16)
            BLOCKS_BF16[mb]((const uint16_t*)w + half * K * ROWS, xf, K, o);
        else if (wt == W_I8)
            BLOCKS_I8[mb]((const int8_t*)w + half * K * ROWS, xf, K, o);
        else
            BLOCKS_F32[mb]((const float*)w + half * K * ROWS, xf, K, o);
    }
}
#else
/* Portable tile: the same packed walk in plain loops, which compilers vectorize over r. */
#define TILE_M 8
static void tile(const void* w, int wt, const void* x, int64_t mb, int64_t K, float* out) {
    for (int64_t i = 0; i < mb * PAIR; i++) out[i] = 0.0f;
    for (int64_t half = 0; half < 2; half++) {
        for (int64_t b = 0; b < mb; b++) {
            float* o = out + b * PAIR + half * ROWS;
            if (wt == W_BF16) {
                const uint16_t* wb = (const uint16_t*)w + half * K * ROWS;
                const uint16_t* xb = (const uint16_t*)x + b * K;
                for (int64_t p = 0; p < K / 2; p++) {
                    float x0 = bf16_to_f32(xb[2 * p]), x1 = bf16_to_f32(xb[2 * p + 1]);
                    const uint16_t* col = wb + p * 2 * ROWS;
#pragma omp simd
                    for (int64_t r = 0; r < ROWS; r++)
                        o[r] += bf16_to_f32(col[2 * r]) * x0 + bf16_to_f32(col[2 * r + 1]) * x1;
                }
            } else if (wt == W_I8) {
                const int8_t* wi = (const int8_t*)w + half * K * ROWS;
                const float* xf = (const float*)x + b * K;
                for (int64_t k = 0; k < K; k++) {
#pragma omp simd
                    for (int64_t r = 0; r < ROWS; r++) o[r] += (float)wi[k * ROWS + r] * xf[k];
                }
            } else {
                const float* wf = (const float*)w + half * K * ROWS;
                const float* xf = (const float*)x + b * K;
                for (int64_t k = 0; k < K; k++) {
#pragma omp simd
                    for (int64_t r = 0; r < ROWS; r++) o[r] += wf[k * ROWS + r] * xf[k];
                }
            }
        }
    }
}
#endif

/*
 * Threads. A step is one OpenMP parallel region (torch's own OpenMP runtime, so the step runs
 * on the same worker threads as torch's operators rather than next to them, still spinning),
 * but the ~250 barriers inside it are ours: libgomp's barriers stop spinning and sleep in the
 * kernel once a process has more OpenMP threads than cores, which happens as soon as a second
 * Python thread runs a torch operator, and a futex sleep per barrier costs milliseconds a step.
 * Ours spin, yielding now and then in case a core is shared with another process.
 */
typedef struct {
    atomic_int arrived;
    atomic_ulong phase;
} barrier_t;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* All nth threads wait here until every one has arrived. */
static void barrier_wait(barrier_t* b, int nth) {
    if (nth == 1) return;
    unsigned long phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->phase, 1, memory_order_release);
        return;
    }
    for (unsigned spins = 1; atomic_load_explicit(&b->phase, memory_order_acquire) == phase;
         spins++) {
        if (spins % 4096 == 0)
            sched_yield();
        else
            cpu_relax();
    }
}

/* One thread's share of a parallel loop over n items: a contiguous run, as evenly as can be. */
typedef struct {
    int tid, nth;
    barrier_t* barrier;
} par_t;

static inline void share(int64_t n, const par_t* par, int64_t* lo, int64_t* hi) {
    int64_t q = n / par->nth, r = n % par->nth, t = par->tid;
    *lo = t * q + (t < r ? t : r);
    *hi = *lo + q + (t < r ? 1 : 0);
}

static inline void sync_all(const par_t* par) { barrier_wait(par->barrier, par->nth); }

/*
 * y[m, n] (+)= scale[n] * sum_k W[n, k] * x[m, k] for M input rows, W packed as above (scale
 * only for int8 weights); called inside a parallel region, the 32-row tiles are shared out
 * among the threads. x is bf16 for bf16 weights (K even), fp32 otherwise.
 */
static void project(const par_t* par, const void* w, int wt, const float* scale, const void* x,
                    int64_t M, int64_t N, int64_t K, float* y, int64_t ldy, int accumulate) {
    const size_t wsz = wt == W_BF16 ? 2 : (wt == W_I8 ? 1 : 4);
    const size_t xsz = wt == W_BF16 ? 2 : 4;
    int64_t lo, hi;
    share(padded_rows(N) / PAIR, par, &lo, &hi);
    for (int64_t t = lo; t < hi; t++) {
        float acc[TILE_M * PAIR];
        const void* wtile = (const char*)w + (size_t)(t * PAIR * K) * wsz;
        int64_t n0 = t * PAIR, nvalid = N - n0 < PAIR ? N - n0 : PAIR;
        for (int64_t m0 = 0; m0 < M; m0 += TILE_M) {
            int64_t mb = M - m0 < TILE_M ? M - m0 : TILE_M;
            tile(wtile, wt, (const char*)x + (size_t)(m0 * K) * xsz, mb, K, acc);
            store_tile(acc, scale ? scale + n0 : NULL, mb, nvalid, y + m0 * ldy + n0, ldy,
                       accumulate);
        }
    }
    sync_all(par);
}

/* out[m] = x[r] / rms(x[r]) * weight (weight in dt) for r = rows[m] (rows NULL: r = m), as
 * bf16 when xbf16, else fp32. */
static void rms_norm_rows(const par_t* par, const float* x, const int64_t* rows,
                          const void* weight, int dt, float eps, int64_t M, int64_t H, void* out,
                          int xbf16) {
    int64_t lo, hi;
    share(M, par, &lo, &hi);
    for (int64_t m = lo; m < hi; m++) {
        const float* row = x + (rows ? rows[m] : m) * H;
        float ss = dot_f32(row, row, H);
        float inv = 1.0f / sqrtf(ss / (float)H + eps);
        for (int64_t i = 0; i < H; i++) {
            float v = row[i] * inv * load(weight, dt, i);
            if (xbf16)
                ((uint16_t*)out)[m * H + i] = f32_to_bf16(v);
            else
                ((float*)out)[m * H + i] = v;
        }
    }
    sync_all(par);
}

/* RMSNorm of each of the n heads of width hd at v, in place, times weight. */
static void norm_heads(float* v, int64_t n, int64_t hd, const float* weight, float eps) {
    for (int64_t h = 0; h < n; h++, v += hd) {
        float inv = 1.0f / sqrtf(dot_f32(v, v, hd) / (float)hd + eps);
        for (int64_t i = 0; i < hd; i++) v[i] = v[i] * inv * weight[i];
    }
}

/* Pairs dimension i with i + half (the Hugging Face layout); sin is the signed table. */
static void rope(float* v, const float* cos, const float* sin, int64_t hd) {
    int64_t half = hd / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] + b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

static void store_row(void* dst, int dt, const float* src, int64_t n) {
    if (dt == DT_BF16) {
        for (int64_t i = 0; i < n; i++) ((uint16_t*)dst)[i] = f32_to_bf16(src[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

/* A prefill chunk whose attention runs in tiles: tokens m0 .. m0 + n - 1, the last attending
 * to len keys; its staged keys and values start at float `stage` of the step's buffer. */
typedef struct {
    int64_t m0, n, len, stage;
} att_run_t;

/* A tile of attention work: tokens m0 .. m0 + nt - 1 of chunk `run`, the query heads of KV
 * head g; cost is its rows' key count, for dealing the largest out first. */
typedef struct {
    int64_t run, m0, nt, g, cost;
} att_item_t;

/* Per query head, part holds hd output sums, then the running maximum and sum. */
static inline int64_t dec_part_floats(int64_t nh, int64_t hd) { return nh * (hd + 2); }

/* The fp32 buffer a thread needs: one block of cache rows for the keys, one for the values. */
static inline int64_t dec_scratch_floats(int64_t row) { return 2 * ATT_VW * row; }

/* How many key ranges a single token's attention is split into: DEC_SPLIT keys each, and
 * when there are few singles, enough ranges (of whole ATT_VW blocks) for every thread. */
static inline int64_t dec_ranges(int64_t len, int64_t n_singles, int64_t nthreads) {
#ifdef DEC_FAST
    int64_t nr = (len + DEC_SPLIT - 1) / DEC_SPLIT;
    const int64_t want = (2 * nthreads + n_singles - 1) / n_singles;
    const int64_t most = (len + DEC_MIN_RANGE - 1) / DEC_MIN_RANGE;
    nr = nr > want ? nr : want;
    return nr < most ? nr : most;
#else
    (void)len, (void)n_singles, (void)nthreads;
    return 1;
#endif
}

/* A range of one single token's keys, for all its heads (see attn_decode_part). */
typedef struct {
    int64_t m, jb, je;
} dec_item_t;

/* Where run r's staged keys (then values) of KV head g start in the stage buffer. */
static inline int64_t att_stage_offset(const att_run_t* run, int64_t g, int64_t hd) {
    const int64_t lp = round_up(run->len, ATT_BK), hdp = round_up(hd, ATT_CW);
    return run->stage + g * lp * (hd + hdp);
}

typedef struct {
    const model_t* mdl;
    int64_t M, max_len, n_out;
    const int64_t *token_ids, *positions, *slot_mapping, *ctx_slots, *ctx_start, *ctx_lens;
    const int64_t* out_rows;
    float* logits;
    float *x, *qkv, *attn, *gu, *scores; /* residual stream, projections' outputs */
    void* in;                            /* a projection's input */
    const int64_t* singles;              /* tokens attending alone (decodes), n_singles */
    const att_item_t* tiles;             /* tiles of prefill tokens, largest first */
    const att_run_t* runs;               /* the chunks they belong to */
    int64_t n_singles, n_tiles, n_runs, n_stage_blocks;
    float* stage; /* the runs' keys and values, restaged each layer */
    const dec_item_t* dec;    /* the singles' key ranges (fast decode attention) */
    const int64_t* dec_first; /* [single]: its first range; [n_singles]: their count */
    int64_t n_dec;
    int dec_fast;          /* whether singles take attn_decode_part (else the loop per head) */
    float *dec_parts, *dec_ws; /* per range: dec_part_floats(); per thread: dec_scratch_floats() */
    atomic_llong* tile_next; /* per layer: the next tile to take */
    float* att_ws;           /* per thread: att_scratch_floats() */
} step_t;

/* The body of a step, run by each thread of the team. */
static void decode_job(const step_t* st, int tid, int nth, barrier_t* barrier) {
    const model_t* mdl = st->mdl;
    const par_t par_ = {tid, nth, barrier}, *par = &par_;
    const int dt = mdl->dtype, wt = mdl->wtype;
    const int xbf16 = wt == W_BF16; /* projection inputs are bf16 only for bf16 weights */
    const int64_t M = st->M, H = mdl->hidden, I = mdl->inter, hd = mdl->head_dim;
    const int64_t nh = mdl->heads, nkv = mdl->kv_heads, group = nh / nkv;
    const int64_t qkv_n = (nh + 2 * nkv) * hd, kv_w = nkv * hd;
    const size_t esz = dt == DT_BF16 ? 2 : 4;
    const float scale = 1.0f / sqrtf((float)hd);
    float *x = st->x, *qkv = st->qkv, *attn = st->attn, *gu = st->gu;
    void* in = st->in;
    float* sc = st->scores ? st->scores + (size_t)tid * (size_t)st->max_len : NULL;
    int64_t lo, hi;

    share(M, par, &lo, &hi);
    for (int64_t m = lo; m < hi; m++)
        for (int64_t i = 0; i < H; i++) x[m * H + i] = load(mdl->embed, dt, st->token_ids[m] * H + i);
    sync_all(par);

    for (int64_t l = 0; l < mdl->n_layers; l++) {
        const layer_t* L = &mdl->layers[l];
        rms_norm_rows(par, x, NULL, L->input_norm, dt, mdl->eps, M, H, in, xbf16);
        project(par, L->qkv, wt, L->qkv_scale, in, M, qkv_n, H, qkv, qkv_n, 0);

        /* Rotate q and k, then write this step's k and v into the cache. */
        share(M, par, &lo, &hi);
        for (int64_t m = lo; m < hi; m++) {
            float* row = qkv + m * qkv_n;
            if (L->qkv_bias)
                for (int64_t i = 0; i < qkv_n; i++) row[i] += L->qkv_bias[i];
            if (L->q_norm) {
                norm_heads(row, nh, hd, L->q_norm, mdl->eps);
                norm_heads(row + nh * hd, nkv, hd, L->k_norm, mdl->eps);
            }
            const float* c = mdl->cos + st->positions[m] * hd;
            const float* s = mdl->sin + st->positions[m] * hd;
            if (!L->no_rope)
                for (int64_t h = 0; h < nh + nkv; h++) rope(row + h * hd, c, s, hd);
            size_t slot = (size_t)(st->slot_mapping[m] * kv_w) * esz;
            store_row((char*)L->k_cache + slot, dt, row + nh * hd, kv_w);
            store_row((char*)L->v_cache + slot, dt, row + nh * hd + kv_w, kv_w);
        }
        sync_all(par);

        /* Single tokens' heads dealt out in turn; then the tiles, each thread taking the next
         * one as it finishes (a chunk's later tokens attend to more of the context, so tiles
         * differ in cost; the largest go first). */
#ifdef DEC_FAST
        if (st->dec_fast) {
            float* dws = st->dec_ws + tid * dec_scratch_floats(kv_w);
            for (int64_t i = par->tid; i < st->n_dec; i += par->nth) {
                const dec_item_t* it = &st->dec[i];
                attn_decode_part(qkv + it->m * qkv_n, L->k_cache, L->v_cache, dt,
                                 st->ctx_slots + st->ctx_start[it->m], it->jb, it->je, nkv,
                                 group, hd, scale, dws,
                                 st->dec_parts + i * dec_part_floats(nh, hd));
            }
        }
#endif
        for (int64_t mh = par->tid; !st->dec_fast && mh < st->n_singles * nh; mh += par->nth) {
            int64_t m = st->singles[mh / nh], h = mh % nh, g = h / group, len = st->ctx_lens[m];
            const float* q = qkv + m * qkv_n + h * hd;
            const int64_t* slots = st->ctx_slots + st->ctx_start[m];
            float mx = attn_scores(q, L->k_cache, dt, slots, len, nkv, g, hd, scale, sc);
            float total = 0.0f;
#pragma omp simd reduction(+ : total)
            for (int64_t j = 0; j < len; j++) {
                sc[j] = exp_f32(sc[j] - mx);
                total += sc[j];
            }
            const float inv = 1.0f / total;
#pragma omp simd
            for (int64_t j = 0; j < len; j++) sc[j] *= inv;
            float* o = attn + m * nh * hd + h * hd;
            attn_values(L->v_cache, dt, slots, len, nkv, g, hd, sc, o);
            if (xbf16) {
                uint16_t* dst = (uint16_t*)in + m * nh * hd + h * hd;
                for (int64_t i = 0; i < hd; i++) dst[i] = f32_to_bf16(o[i]);
            } else {
                memcpy((float*)in + m * nh * hd + h * hd, o, (size_t)hd * sizeof(float));
            }
        }
        if (st->n_tiles) {
            /* Stage each chunk's keys and values (ATT_BK keys of one KV head per item), then
             * take tiles. */
            share(st->n_stage_blocks, par, &lo, &hi);
            for (int64_t b = 0, r = 0, first = 0; b < hi; b++) {
                int64_t per = round_up(st->runs[r].len, ATT_BK) / ATT_BK * nkv;
                while (b - first >= per) {
                    first += per;
                    r++;
                    per = round_up(st->runs[r].len, ATT_BK) / ATT_BK * nkv;
                }
                if (b < lo) continue;
                const att_run_t* run = &st->runs[r];
                const int64_t lp = round_up(run->len, ATT_BK), g = (b - first) % nkv;
                const int64_t j0 = (b - first) / nkv * ATT_BK;
                float* kt = st->stage + att_stage_offset(run, g, hd);
                att_stage_block(L->k_cache, L->v_cache, dt, st->ctx_slots + st->ctx_start[run->m0],
                                run->len, j0, nkv, g, hd, kt, kt + lp * hd);
            }
            sync_all(par);
            const att_scratch_t ws =
                att_scratch(st->att_ws + tid * att_scratch_floats(hd, group), hd, group);
            for (;;) {
                int64_t i = atomic_fetch_add_explicit(&st->tile_next[l], 1, memory_order_relaxed);
                if (i >= st->n_tiles) break;
                const att_item_t* it = &st->tiles[i];
                const att_run_t* run = &st->runs[it->run];
                const int64_t lp = round_up(run->len, ATT_BK);
                const float* kt = st->stage + att_stage_offset(run, it->g, hd);
                attn_tile(qkv, qkv_n, kt, kt + lp * hd, dt, st->ctx_lens, it->m0, it->nt, nkv,
                          it->g, group, hd, scale, &ws, attn, in, xbf16);
            }
        }
        sync_all(par);
        if (st->dec_fast && st->n_singles) {
            /* Merge each single's ranges: rescale each by exp(its max - the overall max). */
            share(st->n_singles * nh, par, &lo, &hi);
            for (int64_t ih = lo; ih < hi; ih++) {
                const int64_t i = ih / nh, h = ih % nh, m = st->singles[i];
                const int64_t first = st->dec_first[i], nr = st->dec_first[i + 1] - first;
                const int64_t pf = dec_part_floats(nh, hd);
                float mx = -INFINITY, total = 0.0f;
                for (int64_t r = 0; r < nr; r++) {
                    const float* ph = st->dec_parts + (first + r) * pf + h * (hd + 2);
                    mx = ph[hd] > mx ? ph[hd] : mx;
                }
                float* o = attn + m * nh * hd + h * hd;
                for (int64_t d = 0; d < hd; d++) o[d] = 0.0f;
                for (int64_t r = 0; r < nr; r++) {
                    const float* ph = st->dec_parts + (first + r) * pf + h * (hd + 2);
                    const float w = exp_f32(ph[hd] - mx);
                    total += w * ph[hd + 1];
#pragma omp simd
                    for (int64_t d = 0; d < hd; d++) o[d] += w * ph[d];
                }
                const float inv = 1.0f / total;
                for (int64_t d = 0; d < hd; d++) o[d] *= inv;
                if (xbf16) {
                    uint16_t* dst = (uint16_t*)in + m * nh * hd + h * hd;
                    for (int64_t d = 0; d < hd; d++) dst[d] = f32_to_bf16(o[d]);
                } else {
                    memcpy((float*)in + m * nh * hd + h * hd, o, (size_t)hd * sizeof(float));
                }
            }
            sync_all(par);
        }
        project(par, L->o, wt, L->o_scale, in, M, H, nh * hd, x, H, 1);
        if (L->o_bias) {
            share(M, par, &lo, &hi);
            for (int64_t m = lo; m < hi; m++)
                for (int64_t i = 0; i < H; i++) x[m * H + i] += L->o_bias[i];
            sync_all(par);
        }

        rms_norm_rows(par, x, NULL, L->post_norm, dt, mdl->eps, M, H, in, xbf16);
        project(par, L->gate_up, wt, L->gate_up_scale, in, M, 2 * I, H, gu, 2 * I, 0);
        /* SwiGLU over all M * I activations, so one row still uses every thread. */
        share(M * I, par, &lo, &hi);
        for (int64_t m = lo / I; m * I < hi; m++) {
            int64_t i0 = m * I > lo ? 0 : lo - m * I, i1 = (m + 1) * I < hi ? I : hi - m * I;
            const float* g = gu + m * 2 * I;
            const float* u = g + I;
            if (xbf16) {
                uint16_t* a = (uint16_t*)in + m * I;
#pragma omp simd
                for (int64_t i = i0; i < i1; i++) a[i] = f32_to_bf16(g[i] / (1.0f + exp_f32(-g[i])) * u[i]);
            } else {
                float* a = (float*)in + m * I;
#pragma omp simd
                for (int64_t i = i0; i < i1; i++) a[i] = g[i] / (1.0f + exp_f32(-g[i])) * u[i];
            }
        }
        sync_all(par);
        project(par, L->down, wt, L->down_scale, in, M, H, I, x, H, 1);
    }
    if (st->n_out == 0) return;
    rms_norm_rows(par, x, st->out_rows, mdl->final_norm, dt, mdl->eps, st->n_out, H, in, xbf16);
    project(par, mdl->lm_head, wt, mdl->lm_head_scale, in, st->n_out, mdl->vocab, H, st->logits,
            mdl->vocab, 0);
}

static int by_cost_desc(const void* a, const void* b) {
    int64_t ca = ((const att_item_t*)a)->cost, cb = ((const att_item_t*)b)->cost;
    return (ca < cb) - (ca > cb);
}

typedef struct {
    int64_t* singles;
    att_run_t* runs;
    att_item_t* tiles;
    dec_item_t* dec;    /* the singles' key ranges, by single, then range */
    int64_t* dec_first; /* [single]: its first range in dec, and one past the last at the end */
    int64_t n_singles, n_runs, n_tiles, n_stage_blocks, stage_floats, n_dec;
} att_plan_t;

static void att_plan_free(att_plan_t* p) {
    free(p->singles), free(p->runs), free(p->tiles), free(p->dec), free(p->dec_first);
}



/*
 * Sort the step's tokens into those that attend alone (decodes, one-token chunks) and runs: two
 * or more consecutive tokens sharing one slot list, each attending to one more slot than the
 * last (a prefill chunk), cut into tiles of at most att_rows_cap() rows per KV head. Returns
 * -1 when memory runs out (the plan is then freed).
 */
static int plan_attention(int64_t M, const int64_t* ctx_start, const int64_t* ctx_lens,
                          int64_t nkv, int64_t group, int64_t hd, int64_t nthreads,
                          att_plan_t* p) {
    const int64_t per_tile = att_rows_cap(group) / group, hdp = round_up(hd, ATT_CW);
    /* Each run has two tokens or more and at most n / per_tile + 1 tiles per KV head. */
    const int64_t n_tiles_max = (M / per_tile + M / 2 + 1) * nkv;
    *p = (att_plan_t){0};
    p->singles = malloc((size_t)(M > 0 ? M : 1) * sizeof(int64_t));
    p->runs = malloc((size_t)(M > 0 ? M : 1) * sizeof(att_run_t));
    p->tiles = malloc((size_t)n_tiles_max * sizeof(att_item_t));
    if (!p->singles || !p->runs || !p->tiles) {
        att_plan_free(p);
        return -1;
    }
    for (int64_t m = 0; m < M;) {
        int64_t e = m + 1;
        while (e < M && ctx_start[e] == ctx_start[m] && ctx_lens[e] == ctx_lens[e - 1] + 1) e++;
        if (e - m < 2) {
            p->singles[p->n_singles++] = m++;
            continue;
        }
        const int64_t r = p->n_runs++, len = ctx_lens[e - 1], lp = round_up(len, ATT_BK);
        p->runs[r] = (att_run_t){m, e - m, len, p->stage_floats};
        p->stage_floats += nkv * lp * (hd + hdp);
        p->n_stage_blocks += nkv * (lp / ATT_BK);
        for (int64_t t0 = m; t0 < e; t0 += per_tile) {
            int64_t nt = e - t0 < per_tile ? e - t0 : per_tile;
            for (int64_t g = 0; g < nkv; g++)
                p->tiles[p->n_tiles++] = (att_item_t){r, t0, nt, g, nt * ctx_lens[t0 + nt - 1]};
        }
        m = e;
    }
    if (p->n_tiles) qsort(p->tiles, (size_t)p->n_tiles, sizeof *p->tiles, by_cost_desc);
    int64_t n_dec = 0;
    for (int64_t i = 0; i < p->n_singles; i++)
        n_dec += dec_ranges(ctx_lens[p->singles[i]], p->n_singles, nthreads);
    p->dec = malloc((size_t)(n_dec > 0 ? n_dec : 1) * sizeof(dec_item_t));
    p->dec_first = malloc((size_t)(p->n_singles + 1) * sizeof(int64_t));
    if (!p->dec || !p->dec_first) {
        att_plan_free(p);
        return -1;
    }
    for (int64_t i = 0; i < p->n_singles; i++) {
        const int64_t m = p->singles[i], len = ctx_lens[m];
        const int64_t nr = dec_ranges(len, p->n_singles, nthreads);
        const int64_t blocks = (len + ATT_VW - 1) / ATT_VW;
        p->dec_first[i] = p->n_dec;
        for (int64_t r = 0; r < nr; r++) {
            int64_t jb = blocks * r / nr * ATT_VW, je = blocks * (r + 1) / nr * ATT_VW;
            p->dec[p->n_dec++] = (dec_item_t){m, jb, je < len ? je : len};
        }
    }
    p->dec_first[p->n_singles] = p->n_dec;
    return 0;
}

/*
 * One step of M tokens: decodes, prefill chunks, or both. For token m: token_ids[m] at
 * positions[m], its K/V written to cache slot slot_mapping[m]; it attends to
 * ctx_slots[ctx_start[m] + j] for j < ctx_lens[m] (its own slot included, and slots this step
 * writes: every token's K/V of a layer is in the cache before any token of it attends). Writes
 * fp32 logits [n_out, vocab] of the tokens out_rows[0..n_out), working on nthreads OpenMP
 * threads. Returns 0, or -1 when memory runs out.
 */
int inferno_decode_step(const model_t* mdl, int64_t M, const int64_t* token_ids,
                        const int64_t* positions, const int64_t* slot_mapping,
                        const int64_t* ctx_slots, const int64_t* ctx_start,
                        const int64_t* ctx_lens, int64_t n_out, const int64_t* out_rows,
                        float* logits, int32_t nthreads) {
    const int64_t H = mdl->hidden, I = mdl->inter, hd = mdl->head_dim, nh = mdl->heads;
    const int64_t qkv_n = (nh + 2 * mdl->kv_heads) * hd;
    const size_t xsz = mdl->wtype == W_BF16 ? 2 : 4;
    int64_t in_w = I > H ? I : H; /* widest projection input */
    in_w = nh * hd > in_w ? nh * hd : in_w;
#ifndef _OPENMP
    nthreads = 1;
#endif
    if (nthreads < 1) nthreads = 1;
    step_t st = {.mdl = mdl,
                 .M = M,
                 .max_len = 1,
                 .n_out = n_out,
                 .token_ids = token_ids,
                 .positions = positions,
                 .slot_mapping = slot_mapping,
                 .ctx_slots = ctx_slots,
                 .ctx_start = ctx_start,
                 .ctx_lens = ctx_lens,
                 .out_rows = out_rows,
                 .logits = logits};
    const int64_t nkv = mdl->kv_heads, group = nh / nkv;
    att_plan_t plan;
    const int planned =
        plan_attention(M, ctx_start, ctx_lens, nkv, group, hd, nthreads, &plan) == 0;
    st.singles = plan.singles;
    st.n_singles = plan.n_singles;
    st.tiles = plan.tiles;
    st.n_tiles = plan.n_tiles;
    st.runs = plan.runs;
    st.n_runs = plan.n_runs;
    st.n_stage_blocks = plan.n_stage_blocks;
    st.tile_next = calloc((size_t)mdl->n_layers, sizeof(atomic_llong));
    st.stage = planned && plan.n_tiles ? malloc((size_t)plan.stage_floats * sizeof(float)) : NULL;
    st.dec = plan.dec;
    st.dec_first = plan.dec_first;
    st.n_dec = plan.n_dec;
#ifdef DEC_FAST
    st.dec_fast = planned && plan.n_singles > 0 && hd % ATT_VW == 0;
    if (st.dec_fast) {
        st.dec_parts = malloc((size_t)(plan.n_dec * dec_part_floats(nh, hd)) * sizeof(float));
        st.dec_ws = malloc((size_t)(nthreads * dec_scratch_floats(nkv * hd)) * sizeof(float));
    }
#endif
    st.att_ws = planned && plan.n_tiles
                    ? malloc((size_t)(nthreads * att_scratch_floats(hd, group)) * sizeof(float))
                    : NULL;
    st.x = malloc((size_t)(M * H) * sizeof(float));
    st.qkv = malloc((size_t)(M * qkv_n) * sizeof(float));
    st.attn = malloc((size_t)(M * nh * hd) * sizeof(float));
    st.gu = malloc((size_t)(M * 2 * I) * sizeof(float));
    st.in = malloc((size_t)(M * in_w) * xsz);
    /* Scores of whole contexts: only the loop per query head (no vector decode path) needs them. */
    const int per_head = planned && !st.dec_fast && plan.n_singles > 0;
    for (int64_t i = 0; per_head && i < plan.n_singles; i++) {
        const int64_t len = ctx_lens[plan.singles[i]];
        st.max_len = len > st.max_len ? len : st.max_len;
    }
    st.scores = per_head ? malloc((size_t)nthreads * (size_t)st.max_len * sizeof(float)) : NULL;
    int ok = st.x && st.qkv && st.attn && st.gu && st.in && (!per_head || st.scores) && planned &&
             st.tile_next && (plan.n_tiles == 0 || (st.att_ws && st.stage)) &&
             (!st.dec_fast || (st.dec_parts && st.dec_ws));
    if (ok) {
        barrier_t barrier = {0, 0};
#pragma omp parallel num_threads(nthreads)
        {
#ifdef _OPENMP
            /* The team may be smaller than asked (nested regions, thread limits). */
            decode_job(&st, omp_get_thread_num(), omp_get_num_threads(), &barrier);
#else
            decode_job(&st, 0, 1, &barrier);
#endif
        }
    }
    free(st.x), free(st.qkv), free(st.attn), free(st.gu), free(st.in), free(st.scores);
    free(st.tile_next), free(st.att_ws), free(st.stage), free(st.dec_parts), free(st.dec_ws);
    if (planned) att_plan_free(&plan);
    return ok ? 0 : -1;
}

/*
 * y[M, N] = x[M, K] @ W^T (times the per-row scales for int8 codes), W packed as for the decode
 * step (its N rows padded to 32), on nthreads OpenMP threads: the matmuls of steps the decode
 * call does not take (prefill chunks, large batches), so the packed copy can be the only one.
 * x is bf16 for bf16 weights (K even), fp32 otherwise; y is fp32.
 */
void inferno_matmul(const void* w, int32_t wt, const float* scale, const void* x, int64_t M,
                    int64_t N, int64_t K, float* y, int32_t nthreads) {
#ifndef _OPENMP
    nthreads = 1;
#endif
    if (nthreads < 1) nthreads = 1;
    barrier_t barrier = {0, 0};
#pragma omp parallel num_threads(nthreads)
    {
#ifdef _OPENMP
        par_t par = {omp_get_thread_num(), omp_get_num_threads(), &barrier};
#else
        par_t par = {0, 1, &barrier};
#endif
        project(&par, w, wt, scale, x, M, N, K, y, N, 0);
    }
}

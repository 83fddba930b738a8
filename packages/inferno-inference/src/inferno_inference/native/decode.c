/*
 * Decode steps of a Llama model on the CPU, one call per step.
 *
 * A decode step runs one new token for each of M sequences through every layer. In PyTorch a
 * layer is about twenty small operator calls, each costing a few microseconds of dispatch, and
 * torch's single-row matmuls read the weights at well under the machine's memory bandwidth. Here
 * the whole step is one OpenMP parallel region: the projections split their output rows across
 * the threads (each thread streams a contiguous run of weight rows once for all M tokens), and
 * the small per-token work (norms, rotary embedding, attention) runs between barriers.
 *
 * Numerics: activations and the residual stream stay in fp32; in bf16 mode the weights and the
 * KV cache are bf16 and each projection's input is rounded to bf16 before the dot products,
 * which accumulate in fp32 (as torch's bf16 matmuls do). The file is compiled on the machine
 * that runs it (-march=native); the AVX-512 paths are used where the compiler targets them and
 * portable loops elsewhere.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define INFERNO_DECODE_ABI 1

enum { DT_F32 = 0, DT_BF16 = 1 };

typedef struct {
    const void* input_norm; /* [hidden] */
    const void* qkv;        /* [(heads + 2 * kv_heads) * head_dim, hidden] */
    const void* o;          /* [hidden, heads * head_dim] */
    const void* post_norm;  /* [hidden] */
    const void* gate_up;    /* [2 * inter, hidden] */
    const void* down;       /* [hidden, inter] */
    void* k_cache;          /* [slots, kv_heads, head_dim] */
    void* v_cache;
} layer_t;

typedef struct {
    int64_t hidden, inter, heads, kv_heads, head_dim, vocab, n_layers;
    float eps;
    int32_t dtype;
    const layer_t* layers;
    const void* embed;      /* [vocab, hidden] */
    const void* final_norm; /* [hidden] */
    const void* lm_head;    /* [vocab, hidden] */
    const float* cos;       /* [max_len, head_dim], fp32 */
    const float* sin;       /* signed: first half negated, see rope.py */
} model_t;

int inferno_decode_abi(void) { return INFERNO_DECODE_ABI; }

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

static float dot_f32(const float* restrict a, const float* restrict b, int64_t n) {
    int64_t i = 0;
    float acc = 0.0f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), a3);
    }
    for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
    acc = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#else
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n - n % 16; j++) acc += a[j] * b[j];
    i = n - n % 16;
#endif
    for (; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* bf16 weights against bf16 inputs, products summed in fp32. */
static float dot_bf16(const uint16_t* restrict w, const uint16_t* restrict x, int64_t n) {
    int64_t i = 0;
    float acc = 0.0f;
#if defined(__AVX512BF16__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + i), (__m512bh)_mm512_loadu_si512(x + i));
        a1 = _mm512_dpbf16_ps(a1, (__m512bh)_mm512_loadu_si512(w + i + 32),
                              (__m512bh)_mm512_loadu_si512(x + i + 32));
    }
    for (; i + 32 <= n; i += 32)
        a0 = _mm512_dpbf16_ps(a0, (__m512bh)_mm512_loadu_si512(w + i), (__m512bh)_mm512_loadu_si512(x + i));
    acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#else
    int64_t end = n - n % 16;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < end; j++) acc += bf16_to_f32(w[j]) * bf16_to_f32(x[j]);
    i = end;
#endif
    for (; i < n; i++) acc += bf16_to_f32(w[i]) * bf16_to_f32(x[i]);
    return acc;
}

#if defined(__AVX512F__)
/*
 * Several input rows at once: a tile of NB weight rows by MB input rows keeps NB * MB
 * accumulators in registers, so each weight vector loaded feeds MB multiply-adds and each input
 * vector NB of them (one row at a time, a step of 16 rows would be bound by loads, not math).
 * Column tails (K not a multiple of the vector width) are finished in scalar code.
 */
#define DEFINE_TILE_F32(NB, MB)                                                                   \
    static void tile_f32_##NB##_##MB(const float* w, const float* x, int64_t K, float* out,      \
                                     int64_t ldo, int accumulate) {                              \
        __m512 acc[NB][MB];                                                                      \
        for (int a = 0; a < NB; a++)                                                             \
            for (int b = 0; b < MB; b++) acc[a][b] = _mm512_setzero_ps();                        \
        int64_t k = 0;                                                                           \
        for (; k + 16 <= K; k += 16) {                                                           \
            __m512 xv[MB];                                                                       \
            for (int b = 0; b < MB; b++) xv[b] = _mm512_loadu_ps(x + b * K + k);                 \
            for (int a = 0; a < NB; a++) {                                                       \
                __m512 wv = _mm512_loadu_ps(w + a * K + k);                                      \
                for (int b = 0; b < MB; b++) acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);  \
            }                                                                                    \
        }                                                                                        \
        for (int a = 0; a < NB; a++)                                                             \
            for (int b = 0; b < MB; b++) {                                                       \
                float v = _mm512_reduce_add_ps(acc[a][b]);                                       \
                for (int64_t j = k; j < K; j++) v += w[a * K + j] * x[b * K + j];               \
                out[b * ldo + a] = accumulate ? out[b * ldo + a] + v : v;                        \
            }                                                                                    \
    }
#define DEFINE_TILE_BF16(NB, MB)                                                                  \
    static void tile_bf16_##NB##_##MB(const uint16_t* w, const uint16_t* x, int64_t K,           \
                                      float* out, int64_t ldo, int accumulate) {                 \
        __m512 acc[NB][MB];                                                                      \
        for (int a = 0; a < NB; a++)                                                             \
            for (int b = 0; b < MB; b++) acc[a][b] = _mm512_setzero_ps();                        \
        int64_t k = 0;                                                                           \
        for (; k + 32 <= K; k += 32) {                                                           \
            __m512i xv[MB];                                                                      \
            for (int b = 0; b < MB; b++) xv[b] = _mm512_loadu_si512(x + b * K + k);              \
            for (int a = 0; a < NB; a++) {                                                       \
                __m512i wv = _mm512_loadu_si512(w + a * K + k);                                  \
                for (int b = 0; b < MB; b++) acc[a][b] = BF16_DOT(acc[a][b], wv, xv[b]);         \
            }                                                                                    \
        }                                                                                        \
        for (int a = 0; a < NB; a++)                                                             \
            for (int b = 0; b < MB; b++) {                                                       \
                float v = _mm512_reduce_add_ps(acc[a][b]);                                       \
                for (int64_t j = k; j < K; j++)                                                  \
                    v += bf16_to_f32(w[a * K + j]) * bf16_to_f32(x[b * K + j]);                  \
                out[b * ldo + a] = accumulate ? out[b * ldo + a] + v : v;                        \
            }                                                                                    \
    }

#if defined(__AVX512BF16__)
#define BF16_DOT(acc, w, x) _mm512_dpbf16_ps((acc), (__m512bh)(w), (__m512bh)(x))
#else
/* Without the bf16 dot instruction: widen both halves of each vector to fp32 and multiply-add. */
static inline __m512 bf16_dot_widen(__m512 acc, __m512i w, __m512i x) {
    __m512 wl = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(w)), 16));
    __m512 xl = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(x)), 16));
    __m512 wh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(w, 1)), 16));
    __m512 xh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(x, 1)), 16));
    return _mm512_fmadd_ps(wh, xh, _mm512_fmadd_ps(wl, xl, acc));
}
#define BF16_DOT(acc, w, x) bf16_dot_widen((acc), (w), (x))
#endif

DEFINE_TILE_F32(4, 1)
DEFINE_TILE_F32(4, 2)
DEFINE_TILE_F32(4, 3)
DEFINE_TILE_F32(4, 4)
DEFINE_TILE_BF16(4, 1)
DEFINE_TILE_BF16(4, 2)
DEFINE_TILE_BF16(4, 3)
DEFINE_TILE_BF16(4, 4)

/* Rows n0..n0+3 against input rows m0..m0+mb-1 (mb <= 4). */
static void tile4(const void* w, int dt, const void* x, int64_t m0, int64_t mb, int64_t n0,
                  int64_t K, float* out, int64_t ldo, int accumulate) {
    if (dt == DT_BF16) {
        const uint16_t* wp = (const uint16_t*)w + n0 * K;
        const uint16_t* xp = (const uint16_t*)x + m0 * K;
        float* o = out + m0 * ldo + n0;
        switch (mb) {
            case 1: tile_bf16_4_1(wp, xp, K, o, ldo, accumulate); break;
            case 2: tile_bf16_4_2(wp, xp, K, o, ldo, accumulate); break;
            case 3: tile_bf16_4_3(wp, xp, K, o, ldo, accumulate); break;
            default: tile_bf16_4_4(wp, xp, K, o, ldo, accumulate); break;
        }
    } else {
        const float* wp = (const float*)w + n0 * K;
        const float* xp = (const float*)x + m0 * K;
        float* o = out + m0 * ldo + n0;
        switch (mb) {
            case 1: tile_f32_4_1(wp, xp, K, o, ldo, accumulate); break;
            case 2: tile_f32_4_2(wp, xp, K, o, ldo, accumulate); break;
            case 3: tile_f32_4_3(wp, xp, K, o, ldo, accumulate); break;
            default: tile_f32_4_4(wp, xp, K, o, ldo, accumulate); break;
        }
    }
}
#define HAVE_TILES 1
#endif

static inline float dot_row(const void* w, int dt, const void* x, int64_t n, int64_t m, int64_t K) {
    return dt == DT_BF16 ? dot_bf16((const uint16_t*)w + n * K, (const uint16_t*)x + m * K, K)
                         : dot_f32((const float*)w + n * K, (const float*)x + m * K, K);
}

/*
 * y[m, n] (+)= sum_k w[n, k] * x[m, k] for M input rows; called inside a parallel region, the
 * output rows are shared out among the threads. x is fp32 (f32 mode) or bf16 (bf16 mode). One
 * input row streams each weight row once with two accumulators (the fastest pattern for a pure
 * bandwidth-bound GEMV); several input rows go through register tiles.
 */
static void project(const void* w, int dt, const void* x, int64_t M, int64_t N, int64_t K,
                    float* y, int64_t ldy, int accumulate) {
#ifdef HAVE_TILES
    if (M > 1) {
        int64_t nblocks = N / 4;
#pragma omp for schedule(static)
        for (int64_t nb = 0; nb < nblocks; nb++) {
            int64_t n0 = nb * 4;
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                int64_t mb = M - m0 < 4 ? M - m0 : 4;
                tile4(w, dt, x, m0, mb, n0, K, y, ldy, accumulate);
            }
        }
#pragma omp for schedule(static)
        for (int64_t n = nblocks * 4; n < N; n++)
            for (int64_t m = 0; m < M; m++) {
                float v = dot_row(w, dt, x, n, m, K);
                y[m * ldy + n] = accumulate ? y[m * ldy + n] + v : v;
            }
        return;
    }
#endif
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m++) {
            float v = dot_row(w, dt, x, n, m, K);
            y[m * ldy + n] = accumulate ? y[m * ldy + n] + v : v;
        }
    }
}

/* out[m] = x[m] / rms(x[m]) * weight, as the projection input type (fp32 or bf16). */
static void rms_norm_rows(const float* x, const void* weight, int dt, float eps, int64_t M,
                          int64_t H, void* out) {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) {
        const float* row = x + m * H;
        float ss = 0.0f;
        for (int64_t i = 0; i < H; i++) ss += row[i] * row[i];
        float inv = 1.0f / sqrtf(ss / (float)H + eps);
        for (int64_t i = 0; i < H; i++) {
            float v = row[i] * inv * load(weight, dt, i);
            if (dt == DT_BF16)
                ((uint16_t*)out)[m * H + i] = f32_to_bf16(v);
            else
                ((float*)out)[m * H + i] = v;
        }
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

/*
 * One decode step. For token m: token_ids[m] at positions[m], its K/V written to cache slot
 * slot_mapping[m]; it attends to ctx_slots[m * span + j] for j < ctx_lens[m] (its own slot
 * included). Writes fp32 logits [M, vocab]; runs on nthreads OpenMP threads. Returns 0, or -1
 * when memory runs out.
 */
int inferno_decode_step(const model_t* mdl, int64_t M, const int64_t* token_ids,
                        const int64_t* positions, const int64_t* slot_mapping,
                        const int64_t* ctx_slots, const int64_t* ctx_lens, int64_t span,
                        float* logits, int32_t nthreads) {
    const int dt = mdl->dtype;
    const int64_t H = mdl->hidden, I = mdl->inter, hd = mdl->head_dim;
    const int64_t nh = mdl->heads, nkv = mdl->kv_heads, group = nh / nkv;
    const int64_t qkv_n = (nh + 2 * nkv) * hd, kv_w = nkv * hd;
    const size_t esz = dt == DT_BF16 ? 2 : 4;
    int64_t in_w = I > H ? I : H; /* widest projection input */
    in_w = nh * hd > in_w ? nh * hd : in_w;
    const float scale = 1.0f / sqrtf((float)hd);

    float* x = malloc((size_t)(M * H) * sizeof(float));        /* residual stream */
    float* qkv = malloc((size_t)(M * qkv_n) * sizeof(float));
    float* attn = malloc((size_t)(M * nh * hd) * sizeof(float));
    float* gu = malloc((size_t)(M * 2 * I) * sizeof(float));
    void* in = malloc((size_t)(M * in_w) * esz);                /* a projection's input */
    int64_t max_len = 1;
    for (int64_t m = 0; m < M; m++) max_len = ctx_lens[m] > max_len ? ctx_lens[m] : max_len;
#ifndef _OPENMP
    nthreads = 1;
#endif
    if (nthreads < 1) nthreads = 1;
    float* scores = malloc((size_t)nthreads * (size_t)max_len * sizeof(float));
    if (!x || !qkv || !attn || !gu || !in || !scores) {
        free(x), free(qkv), free(attn), free(gu), free(in), free(scores);
        return -1;
    }
    (void)span;

#pragma omp parallel num_threads(nthreads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float* sc = scores + (size_t)tid * (size_t)max_len;

#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++)
            for (int64_t i = 0; i < H; i++) x[m * H + i] = load(mdl->embed, dt, token_ids[m] * H + i);

        for (int64_t l = 0; l < mdl->n_layers; l++) {
            const layer_t* L = &mdl->layers[l];
            rms_norm_rows(x, L->input_norm, dt, mdl->eps, M, H, in);
            project(L->qkv, dt, in, M, qkv_n, H, qkv, qkv_n, 0);

            /* Rotate q and k, then write this step's k and v into the cache. */
#pragma omp for schedule(static)
            for (int64_t m = 0; m < M; m++) {
                float* row = qkv + m * qkv_n;
                const float* c = mdl->cos + positions[m] * hd;
                const float* s = mdl->sin + positions[m] * hd;
                for (int64_t h = 0; h < nh + nkv; h++) rope(row + h * hd, c, s, hd);
                store_row((char*)L->k_cache + (size_t)(slot_mapping[m] * kv_w) * esz, dt,
                          row + nh * hd, kv_w);
                store_row((char*)L->v_cache + (size_t)(slot_mapping[m] * kv_w) * esz, dt,
                          row + nh * hd + kv_w, kv_w);
            }

#pragma omp for schedule(static)
            for (int64_t mh = 0; mh < M * nh; mh++) {
                int64_t m = mh / nh, h = mh % nh, g = h / group, len = ctx_lens[m];
                const float* q = qkv + m * qkv_n + h * hd;
                const int64_t* slots = ctx_slots + m * span;
                float mx = -INFINITY;
                for (int64_t j = 0; j < len; j++) {
                    int64_t off = (slots[j] * nkv + g) * hd;
                    float s = 0.0f;
                    if (dt == DT_BF16) {
                        const uint16_t* k = (const uint16_t*)L->k_cache + off;
                        for (int64_t i = 0; i < hd; i++) s += q[i] * bf16_to_f32(k[i]);
                    } else {
                        s = dot_f32(q, (const float*)L->k_cache + off, hd);
                    }
                    s *= scale;
                    sc[j] = s;
                    mx = s > mx ? s : mx;
                }
                float total = 0.0f;
                for (int64_t j = 0; j < len; j++) {
                    sc[j] = expf(sc[j] - mx);
                    total += sc[j];
                }
                float* o = attn + m * nh * hd + h * hd;
                for (int64_t i = 0; i < hd; i++) o[i] = 0.0f;
                for (int64_t j = 0; j < len; j++) {
                    float p = sc[j] / total;
                    int64_t off = (slots[j] * nkv + g) * hd;
                    if (dt == DT_BF16) {
                        const uint16_t* v = (const uint16_t*)L->v_cache + off;
                        for (int64_t i = 0; i < hd; i++) o[i] += p * bf16_to_f32(v[i]);
                    } else {
                        const float* v = (const float*)L->v_cache + off;
                        for (int64_t i = 0; i < hd; i++) o[i] += p * v[i];
                    }
                }
                if (dt == DT_BF16) {
                    uint16_t* dst = (uint16_t*)in + m * nh * hd + h * hd;
                    for (int64_t i = 0; i < hd; i++) dst[i] = f32_to_bf16(o[i]);
                } else {
                    memcpy((float*)in + m * nh * hd + h * hd, o, (size_t)hd * sizeof(float));
                }
            }
            project(L->o, dt, in, M, H, nh * hd, x, H, 1);

            rms_norm_rows(x, L->post_norm, dt, mdl->eps, M, H, in);
            project(L->gate_up, dt, in, M, 2 * I, H, gu, 2 * I, 0);
#pragma omp for schedule(static)
            for (int64_t m = 0; m < M; m++) {
                for (int64_t i = 0; i < I; i++) {
                    float g = gu[m * 2 * I + i], u = gu[m * 2 * I + I + i];
                    float a = g / (1.0f + expf(-g)) * u;
                    if (dt == DT_BF16)
                        ((uint16_t*)in)[m * I + i] = f32_to_bf16(a);
                    else
                        ((float*)in)[m * I + i] = a;
                }
            }
            project(L->down, dt, in, M, H, I, x, H, 1);
        }
        rms_norm_rows(x, mdl->final_norm, dt, mdl->eps, M, H, in);
        project(mdl->lm_head, dt, in, M, mdl->vocab, H, logits, mdl->vocab, 0);
    }

    free(x), free(qkv), free(attn), free(gu), free(in), free(scores);
    return 0;
}

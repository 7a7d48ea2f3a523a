/* LAMB on the CPU in three passes over the parameters (mfdsl/runner/lamb_cpu.py builds and
 * calls this; the update is timm's Lamb, see mfdsl/runner/lamb.py).
 *
 *   sumsq:   s = sum of g^2 over every tensor (the global gradient norm)          read g
 *   moments: g' = g / clip; m = lerp(m, g', 1 - beta1); v = beta2 v + (1 - beta2) g'^2;
 *            u = m / bc1 / (sqrt(v) / sqrt(bc2) + eps) + wd p, stored over g; sums of
 *            p^2 and u^2                                 read g, m, v, p; write m, v, g
 *   apply:   p += size_i u, size_i = -lr * trust ratio of tensor i   read p, g; write p
 *
 * u goes into the gradient's memory, just read: no buffer the model's size, and no write
 * to memory the CPU would first have to read (write-allocate). Computing u again in the
 * apply pass instead moves as many bytes but costs a division and a square root per
 * element: 5-12% slower here (2-core AVX2 VM, caformer_s18's 26M values).
 *
 * Work is cut into blocks of at most BLOCK elements of one tensor; threads take contiguous
 * runs of blocks and each block keeps its own partial sums, added up per tensor in block
 * order afterwards, so the result does not depend on the number of threads. Sums are in
 * double for both element types. Nothing here allocates except the block table and the
 * partial sums; a failed allocation returns -1 before anything is written. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define BLOCK 16384
#define MAX_THREADS 256

typedef struct {
    int64_t tensor, start, len;
} Block;

typedef struct Job Job;
typedef void (*BlockFn)(const Job *job, int64_t b);

struct Job {
    const Block *blocks;
    BlockFn fn;
    int64_t first, last; /* this worker's blocks */
    void *const *p, *const *g, *const *m, *const *v;
    double *partial;     /* per block: 1 (sumsq) or 2 (moments) sums */
    const double *size;  /* per tensor (apply) */
    double inv_clip, beta1, beta2, inv_bc1, inv_sbc2, eps, wd;
};

static int64_t count_blocks(int64_t n, const int64_t *numel) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) count += (numel[i] + BLOCK - 1) / BLOCK;
    return count;
}

static Block *make_blocks(int64_t n, const int64_t *numel, int64_t *count) {
    *count = count_blocks(n, numel);
    Block *blocks = malloc(sizeof(Block) * (size_t)(*count > 0 ? *count : 1));
    if (!blocks) return NULL;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t s = 0; s < numel[i]; s += BLOCK) {
            blocks[k].tensor = i;
            blocks[k].start = s;
            blocks[k].len = numel[i] - s < BLOCK ? numel[i] - s : BLOCK;
            k++;
        }
    return blocks;
}

static void *work(void *arg) {
    const Job *job = arg;
    for (int64_t b = job->first; b < job->last; b++) job->fn(job, b);
    return NULL;
}

/* Runs job->fn on every block, over at most `threads` threads (the calling one included);
 * where a thread cannot be started its blocks run on the caller. */
static void run_blocks(const Job *tmpl, int64_t n_blocks, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > n_blocks) threads = (int)(n_blocks > 0 ? n_blocks : 1);
    Job jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        jobs[t] = *tmpl;
        jobs[t].first = n_blocks * t / threads;
        jobs[t].last = n_blocks * (t + 1) / threads;
        started[t] = t > 0 && pthread_create(&ids[t], NULL, work, &jobs[t]) == 0;
    }
    for (int t = 0; t < threads; t++)
        if (!started[t]) work(&jobs[t]);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(ids[t], NULL);
}

/* The step's scalars from the tensors that hold them (read here, so that Python reads no
 * tensor value): 1 where found_inf says the step is skipped. The clip factor is timm's,
 * max(1, |g| / max_norm) over unscaled gradients, times the loss scale; max_norm <= 0
 * turns clipping off. */
static int scalars(const float *step, const float *found_inf, const float *grad_scale,
                   double sumsq, double max_norm, double beta1, double beta2,
                   int bias_correction, double *inv_clip, double *inv_bc1, double *inv_sbc2) {
    if (found_inf && *found_inf != 0.0f) return 1;
    const double scale = grad_scale ? (double)*grad_scale : 1.0;
    double clip = scale;
    if (max_norm > 0.0) {
        const double ratio = sqrt(sumsq) / scale / max_norm;
        clip = (isnan(ratio) || ratio > 1.0 ? ratio : 1.0) * scale; /* NaN: torch's clamp */
    }
    *inv_clip = 1.0 / clip;
    *inv_bc1 = bias_correction ? 1.0 / (1.0 - pow(beta1, (double)*step)) : 1.0;
    *inv_sbc2 = bias_correction ? 1.0 / sqrt(1.0 - pow(beta2, (double)*step)) : 1.0;
    return 0;
}

#define DEFINE_KERNELS(T, SUFFIX, SQRT)                                                      \
    static void sumsq_block_##SUFFIX(const Job *job, int64_t b) {                           \
        const Block *blk = &job->blocks[b];                                                  \
        const T *x = (const T *)job->g[blk->tensor] + blk->start;                            \
        double s = 0.0;                                                                      \
        _Pragma("omp simd reduction(+:s)")                                                   \
        for (int64_t j = 0; j < blk->len; j++) s += (double)x[j] * (double)x[j];            \
        job->partial[b] = s;                                                                 \
    }                                                                                        \
                                                                                             \
    static void moments_block_##SUFFIX(const Job *job, int64_t b) {                         \
        const Block *blk = &job->blocks[b];                                                  \
        const int64_t i = blk->tensor, o = blk->start;                                       \
        T *g = (T *)job->g[i] + o; /* read, then holds u */                                  \
        const T *p = (const T *)job->p[i] + o;                                               \
        T *m = (T *)job->m[i] + o, *v = (T *)job->v[i] + o;                                  \
        const T inv_clip = (T)job->inv_clip, w1 = (T)(1.0 - job->beta1);                     \
        const T beta2 = (T)job->beta2, w2 = (T)(1.0 - job->beta2);                           \
        const T inv_bc1 = (T)job->inv_bc1, inv_sbc2 = (T)job->inv_sbc2;                      \
        const T eps = (T)job->eps, wd = (T)job->wd;                                          \
        double pp = 0.0, uu = 0.0;                                                           \
        _Pragma("omp simd reduction(+:pp, uu)")                                              \
        for (int64_t j = 0; j < blk->len; j++) {                                             \
            const T gj = g[j] * inv_clip;                                                    \
            const T mj = m[j] + w1 * (gj - m[j]);                                            \
            const T vj = beta2 * v[j] + w2 * (gj * gj);                                      \
            const T uj = mj * inv_bc1 / (SQRT(vj) * inv_sbc2 + eps) + wd * p[j];             \
            m[j] = mj;                                                                       \
            v[j] = vj;                                                                       \
            g[j] = uj;                                                                       \
            pp += (double)p[j] * (double)p[j];                                               \
            uu += (double)uj * (double)uj;                                                   \
        }                                                                                    \
        job->partial[2 * b] = pp;                                                            \
        job->partial[2 * b + 1] = uu;                                                        \
    }                                                                                        \
                                                                                             \
    static void apply_block_##SUFFIX(const Job *job, int64_t b) {                           \
        const Block *blk = &job->blocks[b];                                                  \
        const int64_t i = blk->tensor, o = blk->start;                                       \
        T *p = (T *)job->p[i] + o;                                                           \
        const T *u = (const T *)job->g[i] + o;                                               \
        const T size = (T)job->size[i];                                                      \
        _Pragma("omp simd")                                                                  \
        for (int64_t j = 0; j < blk->len; j++) p[j] += size * u[j];                          \
    }                                                                                        \
                                                                                             \
    /* The sum of squares of every element of the n tensors x (0 on success). */            \
    int mfdsl_sumsq_##SUFFIX(int64_t n, void *const *x, const int64_t *numel, int threads, \
                             double *out) {                                                  \
        int64_t n_blocks;                                                                    \
        Block *blocks = make_blocks(n, numel, &n_blocks);                                    \
        double *partial = malloc(sizeof(double) * (size_t)(n_blocks > 0 ? n_blocks : 1));    \
        if (!blocks || !partial) {                                                           \
            free(blocks);                                                                    \
            free(partial);                                                                   \
            return -1;                                                                       \
        }                                                                                    \
        Job job = {0};                                                                       \
        job.blocks = blocks;                                                                 \
        job.fn = sumsq_block_##SUFFIX;                                                       \
        job.g = x;                                                                           \
        job.partial = partial;                                                               \
        run_blocks(&job, n_blocks, threads);                                                 \
        double total = 0.0;                                                                  \
        for (int64_t b = 0; b < n_blocks; b++) total += partial[b];                          \
        *out = total;                                                                        \
        free(blocks);                                                                        \
        free(partial);                                                                       \
        return 0;                                                                            \
    }                                                                                        \
                                                                                             \
    /* One group's LAMB update (step: its count, already advanced; found_inf and         \
     * grad_scale may be NULL; sumsq: the squared global gradient norm). ratio[i] receives \
     * tensor i's trust ratio (1 where the group does not adapt). 0 when done, 1 when      \
     * skipped (nothing written), -1 when out of memory (nothing written). */               \
    int mfdsl_lamb_group_##SUFFIX(int64_t n, void *const *p, void *const *g, void *const *m, \
                                  void *const *v, const int64_t *numel, const float *step,  \
                                  const float *found_inf, const float *grad_scale,          \
                                  double sumsq, double max_norm, double beta1, double beta2,\
                                  int bias_correction, double eps, double wd, double lr,    \
                                  int adapt, int trust_clip, int threads, double *ratio) {  \
        double inv_clip, inv_bc1, inv_sbc2;                                                  \
        if (scalars(step, found_inf, grad_scale, sumsq, max_norm, beta1, beta2,              \
                    bias_correction, &inv_clip, &inv_bc1, &inv_sbc2))                        \
            return 1;                                                                        \
        int64_t n_blocks;                                                                    \
        Block *blocks = make_blocks(n, numel, &n_blocks);                                    \
        double *partial = malloc(sizeof(double) * (size_t)(2 * n_blocks + n + 1));           \
        if (!blocks || !partial) {                                                           \
            free(blocks);                                                                    \
            free(partial);                                                                   \
            return -1;                                                                       \
        }                                                                                    \
        double *size = partial + 2 * n_blocks;                                               \
        Job job = {0};                                                                       \
        job.blocks = blocks;                                                                 \
        job.p = p;                                                                           \
        job.g = g;                                                                           \
        job.m = m;                                                                           \
        job.v = v;                                                                           \
        job.partial = partial;                                                               \
        job.size = size;                                                                     \
        job.inv_clip = inv_clip;                                                             \
        job.beta1 = beta1;                                                                   \
        job.beta2 = beta2;                                                                   \
        job.inv_bc1 = inv_bc1;                                                               \
        job.inv_sbc2 = inv_sbc2;                                                             \
        job.eps = eps;                                                                       \
        job.wd = wd;                                                                         \
        job.fn = moments_block_##SUFFIX;                                                     \
        run_blocks(&job, n_blocks, threads);                                                 \
        for (int64_t i = 0, b = 0; i < n; i++) {                                             \
            double pp = 0.0, uu = 0.0;                                                       \
            for (; b < n_blocks && blocks[b].tensor == i; b++) {                             \
                pp += partial[2 * b];                                                        \
                uu += partial[2 * b + 1];                                                    \
            }                                                                                \
            double r = 1.0;                                                                  \
            if (adapt) {                                                                     \
                /* timm: |p| / |u|, 1 where either is 0; at most 1 with trust_clip */        \
                const double wn = sqrt(pp), un = sqrt(uu);                                   \
                if (wn > 0.0 && un > 0.0) r = wn / un;                                       \
                if (trust_clip && r > 1.0) r = 1.0;                                          \
            }                                                                                \
            ratio[i] = r;                                                                    \
            size[i] = -lr * r;                                                               \
        }                                                                                    \
        job.fn = apply_block_##SUFFIX;                                                       \
        run_blocks(&job, n_blocks, threads);                                                 \
        free(blocks);                                                                        \
        free(partial);                                                                       \
        return 0;                                                                            \
    }

DEFINE_KERNELS(float, f32, sqrtf)
DEFINE_KERNELS(double, f64, sqrt)

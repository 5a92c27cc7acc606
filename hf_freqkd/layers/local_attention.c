/* FAM-KD's 3x3 local self-attention, forward and backward, fused for the CPU.
 *
 * Computes what _LocalAttention in frequency_attention.py computes (that path is the reference the
 * tests compare against): for each pixel p of each (batch, channel) plane,
 *     logit_j = q[p] * (k[p + d_j] + r[c, j]),  w = softmax_j(logit),  out[p] = sum_j w_j v[p + d_j]
 * over the size * size window offsets d_j, keys and values zero-padded by size / 2 on each side.
 * Why by hand: the torch path makes about a dozen passes over (size^2, B, C, H, W) temporaries;
 * here each pixel's nine logits stay in registers and every tensor is read or written once.
 *
 * Layout (all float32, C-contiguous):
 *   query          (B, C, H, W)
 *   keys_values    (B, 2C, H + 2p, W + 2p): keys in channels [0, C), values in [C, 2C), zero-padded
 *   relative       (C, size * size)
 *   out            (B, C, H, W)
 * The backward pass takes no `out`: it recomputes each pixel's weights and, with them, its output,
 * so the autograd graph keeps nothing of the output's size (saves a map per module per step).
 * Work is split over the B * C planes; each plane's gradients touch only that plane's rows of the
 * outputs (grad_relative is written per plane and summed over the batch by the caller), so the
 * threads never write the same memory.
 *
 * Built at first use by hf_freqkd/layers/native.py (cc -O3 -shared -pthread); no Python or torch headers.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const float *query, *keys_values, *relative, *grad_out;
    float *result, *grad_query, *grad_keys_values, *grad_relative;
    long batch, channels, height, width, size;
    long first_plane, last_plane;
    int failed; /* set when the worker's scratch memory could not be allocated */
} Job;

/* One (batch, channel) plane's rows of every tensor a pass reads or writes (NULL where the pass has none). */
typedef struct {
    const float *query, *keys, *values, *relative, *grad_out;
    float *out, *grad_query, *grad_keys, *grad_values, *grad_relative;
} Plane;

static Plane plane_at(const Job *job, long plane) {
    const long b = plane / job->channels, c = plane % job->channels, pixels = job->height * job->width;
    const long padded = (job->height + job->size - 1) * (job->width + job->size - 1);
    const long keys_offset = (b * 2 * job->channels + c) * padded, values_offset = keys_offset + job->channels * padded;
    Plane p = {0};
    p.query = job->query + plane * pixels;
    p.keys = job->keys_values + keys_offset;
    p.values = job->keys_values + values_offset;
    p.relative = job->relative + c * job->size * job->size;
    if (job->result != NULL) p.out = job->result + plane * pixels;
    if (job->grad_out != NULL) {
        p.grad_out = job->grad_out + plane * pixels;
        p.grad_query = job->grad_query + plane * pixels;
        p.grad_keys = job->grad_keys_values + keys_offset;
        p.grad_values = job->grad_keys_values + values_offset;
        p.grad_relative = job->grad_relative + plane * job->size * job->size;
    }
    return p;
}

/* Row h of a plane: logits[j * W + w] for every offset j and column w, then the softmax in place. */
static void window_weights(const Job *job, const float *query_row, const float *keys, const float *relative,
                           long h, float *weights) {
    const long size = job->size, width = job->width, padded_width = width + size - 1;
    const long taps = size * size;
    for (long j = 0; j < taps; ++j) {
        const float *key_row = keys + (h + j / size) * padded_width + j % size;
        const float r = relative[j];
        float *logit = weights + j * width;
        for (long w = 0; w < width; ++w) logit[w] = query_row[w] * (key_row[w] + r);
    }
    float *largest = weights + taps * width; /* scratch rows: max, then the sum */
    float *total = largest + width;
    for (long w = 0; w < width; ++w) largest[w] = weights[w];
    for (long j = 1; j < taps; ++j)
        for (long w = 0; w < width; ++w) largest[w] = fmaxf(largest[w], weights[j * width + w]);
    for (long w = 0; w < width; ++w) total[w] = 0.0f;
    for (long j = 0; j < taps; ++j)
        for (long w = 0; w < width; ++w) {
            const float e = expf(weights[j * width + w] - largest[w]);
            weights[j * width + w] = e;
            total[w] += e;
        }
    for (long w = 0; w < width; ++w) total[w] = 1.0f / total[w];
    for (long j = 0; j < taps; ++j)
        for (long w = 0; w < width; ++w) weights[j * width + w] *= total[w];
}

/* size 3 (FAM-KD's window), one row: the nine taps are compile-time constants, so the compiler keeps
 * each pixel's logits in vector registers and vectorises over the columns in a single loop. */
static void forward_row_3x3(const float *restrict query_row, const float *restrict keys, const float *restrict values,
                            const float *restrict relative, long h, long width, float *restrict out_row) {
    const long padded_width = width + 2;
    const float *k0 = keys + h * padded_width, *v0 = values + h * padded_width;
    for (long w = 0; w < width; ++w) {
        float logit[9], largest, total = 0.0f, sum = 0.0f;
        for (int j = 0; j < 9; ++j) logit[j] = query_row[w] * (k0[(j / 3) * padded_width + j % 3 + w] + relative[j]);
        largest = logit[0];
        for (int j = 1; j < 9; ++j) largest = fmaxf(largest, logit[j]);
        for (int j = 0; j < 9; ++j) {
            const float e = expf(logit[j] - largest);
            total += e;
            sum += e * v0[(j / 3) * padded_width + j % 3 + w];
        }
        out_row[w] = sum / total;
    }
}

/* out_row = sum_j weights_j * values at offset j (weights from window_weights, any size). */
static void weighted_values(const Job *job, const float *values, const float *weights, long h, float *out_row) {
    const long size = job->size, width = job->width, padded_width = width + size - 1;
    for (long w = 0; w < width; ++w) out_row[w] = 0.0f;
    for (long j = 0; j < size * size; ++j) {
        const float *value_row = values + (h + j / size) * padded_width + j % size;
        const float *weight = weights + j * width;
        for (long w = 0; w < width; ++w) out_row[w] += weight[w] * value_row[w];
    }
}

static void *forward_planes(void *argument) {
    const Job *job = argument;
    const long height = job->height, width = job->width;
    float *weights = malloc(sizeof(float) * (job->size * job->size + 2) * width);
    if (weights == NULL) {
        ((Job *)argument)->failed = 1;
        return NULL;
    }
    for (long plane = job->first_plane; plane < job->last_plane; ++plane) {
        const Plane p = plane_at(job, plane);
        for (long h = 0; h < height; ++h) {
            if (job->size == 3) {
                forward_row_3x3(p.query + h * width, p.keys, p.values, p.relative, h, width, p.out + h * width);
                continue;
            }
            window_weights(job, p.query + h * width, p.keys, p.relative, h, weights);
            weighted_values(job, p.values, weights, h, p.out + h * width);
        }
    }
    free(weights);
    return NULL;
}

/* size 3, one row of the backward pass: the weights are recomputed as in forward_row_3x3 and kept,
 * times grad_out, in weighted_grads (9 x width), and the row's output in out_row; then tap by tap,
 * a loop over the columns whose key and value gradient targets are distinct pixels, so it vectorises. */
static __attribute__((noinline)) void backward_row_3x3(const float *restrict query_row, const float *restrict keys, const float *restrict values,
                             const float *restrict relative, float *restrict out_row,
                             const float *restrict grad_row, long h, long width, float *restrict grad_query_row,
                             float *grad_keys, float *grad_values, float *restrict grad_relative,
                             float *restrict weighted_grads) {
    const long padded_width = width + 2;
    const float *k0 = keys + h * padded_width, *v0 = values + h * padded_width;
    float *gk0 = grad_keys + h * padded_width, *gv0 = grad_values + h * padded_width;
    /* the nine rows of weighted_grads are disjoint; without this gcc gives up on the alias checks */
#pragma GCC ivdep
    for (long w = 0; w < width; ++w) {
        float logit[9], largest, total = 0.0f;
        for (int i = 0; i < 9; ++i) logit[i] = query_row[w] * (k0[(i / 3) * padded_width + i % 3 + w] + relative[i]);
        largest = logit[0];
        for (int i = 1; i < 9; ++i) largest = fmaxf(largest, logit[i]);
        float exponential[9], sum = 0.0f;
        for (int i = 0; i < 9; ++i) {
            exponential[i] = expf(logit[i] - largest);
            total += exponential[i];
            sum += exponential[i] * v0[(i / 3) * padded_width + i % 3 + w];
        }
        out_row[w] = sum / total;
        const float scale = grad_row[w] / total;
        for (int i = 0; i < 9; ++i) weighted_grads[i * width + w] = exponential[i] * scale;
    }
    for (int j = 0; j < 9; ++j) {
        /* tap by tap: the window targets of one tap never overlap within the row */
        const long offset = (j / 3) * padded_width + j % 3;
        const float r = relative[j];
        const float *weighted_grad_row = weighted_grads + j * width;
        float relative_sum = 0.0f;
        for (long w = 0; w < width; ++w) {
            const float weighted_grad = weighted_grad_row[w];
            const float grad_logit = weighted_grad * (v0[offset + w] - out_row[w]);
            gv0[offset + w] += weighted_grad;
            grad_query_row[w] += grad_logit * (k0[offset + w] + r);
            const float grad_key = grad_logit * query_row[w];
            gk0[offset + w] += grad_key;
            relative_sum += grad_key;
        }
        grad_relative[j] += relative_sum;
    }
}

static void *backward_planes(void *argument) {
    const Job *job = argument;
    const long size = job->size, height = job->height, width = job->width;
    const long padded_width = width + size - 1, taps = size * size;
    /* weights (taps rows + 2 scratch rows), then the recomputed output row, then d logit */
    float *weights = malloc(sizeof(float) * (taps + 4) * width);
    if (weights == NULL) {
        ((Job *)argument)->failed = 1;
        return NULL;
    }
    float *out_row = weights + (taps + 2) * width, *grad_logit = out_row + width;
    for (long plane = job->first_plane; plane < job->last_plane; ++plane) {
        const Plane p = plane_at(job, plane);
        for (long h = 0; h < height; ++h) {
            const float *query_row = p.query + h * width, *grad_row = p.grad_out + h * width;
            float *grad_query_row = p.grad_query + h * width;
            for (long w = 0; w < width; ++w) grad_query_row[w] = 0.0f;
            if (size == 3) {
                backward_row_3x3(query_row, p.keys, p.values, p.relative, out_row, grad_row, h, width, grad_query_row,
                                 p.grad_keys, p.grad_values, p.grad_relative, weights);
                continue;
            }
            window_weights(job, query_row, p.keys, p.relative, h, weights);
            weighted_values(job, p.values, weights, h, out_row);
            for (long j = 0; j < taps; ++j) {
                const long offset = (h + j / size) * padded_width + j % size;
                const float *key_row = p.keys + offset, *value_row = p.values + offset;
                float *grad_key_row = p.grad_keys + offset, *grad_value_row = p.grad_values + offset;
                const float *weight = weights + j * width;
                const float r = p.relative[j];
                float relative_sum = 0.0f;
                /* softmax backward: d logit_j = w_j * g * (v_j - out), as sum_i w_i v_i is out */
                for (long w = 0; w < width; ++w) {
                    grad_value_row[w] += weight[w] * grad_row[w];
                    grad_logit[w] = weight[w] * grad_row[w] * (value_row[w] - out_row[w]);
                    grad_query_row[w] += grad_logit[w] * (key_row[w] + r);
                    const float grad_key = grad_logit[w] * query_row[w];
                    grad_key_row[w] += grad_key;
                    relative_sum += grad_key;
                }
                p.grad_relative[j] += relative_sum;
            }
        }
    }
    free(weights);
    return NULL;
}

/* Returns 0, or 1 when a worker could not allocate its scratch rows (the outputs are then incomplete). */
static int run_jobs(Job *base, void *(*work)(void *), long threads) {
    const long planes = base->batch * base->channels;
    if (planes == 0) return 0;
    if (threads < 1) threads = 1;
    if (threads > planes) threads = planes;
    Job jobs[64];
    pthread_t handles[64];
    if (threads > 64) threads = 64;
    for (long t = 0; t < threads; ++t) {
        jobs[t] = *base;
        jobs[t].first_plane = planes * t / threads;
        jobs[t].last_plane = planes * (t + 1) / threads;
    }
    long started = 1;
    for (long t = 1; t < threads; ++t, ++started)
        if (pthread_create(&handles[t], NULL, work, &jobs[t]) != 0) break;
    /* a thread that could not start has its planes done here, after this thread's own */
    work(&jobs[0]);
    for (long t = started; t < threads; ++t) work(&jobs[t]);
    for (long t = 1; t < started; ++t) pthread_join(handles[t], NULL);
    int failed = 0;
    for (long t = 0; t < threads; ++t) failed |= jobs[t].failed;
    return failed;
}

int hf_freqkd_local_attention_forward(const float *query, const float *keys_values, const float *relative, float *out,
                                      long batch, long channels, long height, long width, long size, long threads) {
    Job job = {query, keys_values, relative, NULL, out, NULL, NULL, NULL,
               batch, channels, height, width, size, 0, 0, 0};
    return run_jobs(&job, forward_planes, threads);
}

/* grad_keys_values and grad_relative (B, C, size * size) must be zeroed by the caller. */
int hf_freqkd_local_attention_backward(const float *query, const float *keys_values, const float *relative,
                                        const float *grad_out, float *grad_query,
                                        float *grad_keys_values, float *grad_relative, long batch, long channels,
                                        long height, long width, long size, long threads) {
    Job job = {query, keys_values, relative, grad_out, NULL, grad_query, grad_keys_values, grad_relative,
               batch, channels, height, width, size, 0, 0, 0};
    return run_jobs(&job, backward_planes, threads);
}

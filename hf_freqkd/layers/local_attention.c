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
    const float *query, *keys_values, *relative, *out, *grad_out;
    float *result, *grad_query, *grad_keys_values, *grad_relative;
    long batch, channels, height, width, size;
    long first_plane, last_plane;
    int failed; /* set when the worker's scratch memory could not be allocated */
} Job;

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

static void *forward_planes(void *argument) {
    const Job *job = argument;
    const long size = job->size, height = job->height, width = job->width, channels = job->channels;
    const long padded = (height + size - 1) * (width + size - 1), padded_width = width + size - 1;
    const long taps = size * size;
    float *weights = malloc(sizeof(float) * (taps + 2) * width);
    if (weights == NULL) {
        ((Job *)argument)->failed = 1;
        return NULL;
    }
    for (long plane = job->first_plane; plane < job->last_plane; ++plane) {
        const long b = plane / channels, c = plane % channels;
        const float *query = job->query + plane * height * width;
        const float *keys = job->keys_values + (b * 2 * channels + c) * padded;
        const float *values = keys + channels * padded;
        const float *relative = job->relative + c * taps;
        float *out = job->result + plane * height * width;
        for (long h = 0; h < height; ++h) {
            if (size == 3) {
                forward_row_3x3(query + h * width, keys, values, relative, h, width, out + h * width);
                continue;
            }
            window_weights(job, query + h * width, keys, relative, h, weights);
            float *out_row = out + h * width;
            for (long w = 0; w < width; ++w) out_row[w] = 0.0f;
            for (long j = 0; j < taps; ++j) {
                const float *value_row = values + (h + j / size) * padded_width + j % size;
                const float *weight = weights + j * width;
                for (long w = 0; w < width; ++w) out_row[w] += weight[w] * value_row[w];
            }
        }
    }
    free(weights);
    return NULL;
}

/* size 3, one row of the backward pass: the weights are recomputed as in forward_row_3x3 and kept,
 * times grad_out, in weighted_grads (9 x width); then tap by tap, a loop over the columns whose
 * key and value gradient targets are distinct pixels, so it vectorises. */
static __attribute__((noinline)) void backward_row_3x3(const float *restrict query_row, const float *restrict keys, const float *restrict values,
                             const float *restrict relative, const float *restrict out_row,
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
        float exponential[9];
        for (int i = 0; i < 9; ++i) {
            exponential[i] = expf(logit[i] - largest);
            total += exponential[i];
        }
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
    const long size = job->size, height = job->height, width = job->width, channels = job->channels;
    const long padded = (height + size - 1) * (width + size - 1), padded_width = width + size - 1;
    const long taps = size * size;
    float *weights = malloc(sizeof(float) * (taps + 2) * width);
    float *grad_logit = malloc(sizeof(float) * width);
    if (weights == NULL || grad_logit == NULL) {
        free(weights);
        free(grad_logit);
        ((Job *)argument)->failed = 1;
        return NULL;
    }
    for (long plane = job->first_plane; plane < job->last_plane; ++plane) {
        const long b = plane / channels, c = plane % channels;
        const float *query = job->query + plane * height * width;
        const float *keys = job->keys_values + (b * 2 * channels + c) * padded;
        const float *values = keys + channels * padded;
        const float *relative = job->relative + c * taps;
        const float *out = job->out + plane * height * width;
        const float *grad_out = job->grad_out + plane * height * width;
        float *grad_query = job->grad_query + plane * height * width;
        float *grad_keys = job->grad_keys_values + (b * 2 * channels + c) * padded;
        float *grad_values = grad_keys + channels * padded;
        float *grad_relative = job->grad_relative + plane * taps;
        for (long h = 0; h < height; ++h) {
            const float *query_row = query + h * width, *out_row = out + h * width, *grad_row = grad_out + h * width;
            float *grad_query_row = grad_query + h * width;
            for (long w = 0; w < width; ++w) grad_query_row[w] = 0.0f;
            if (size == 3) {
                backward_row_3x3(query_row, keys, values, relative, out_row, grad_row, h, width, grad_query_row,
                                 grad_keys, grad_values, grad_relative, weights);
                continue;
            }
            window_weights(job, query_row, keys, relative, h, weights);
            for (long j = 0; j < taps; ++j) {
                const long offset = (h + j / size) * padded_width + j % size;
                const float *key_row = keys + offset, *value_row = values + offset;
                float *grad_key_row = grad_keys + offset, *grad_value_row = grad_values + offset;
                const float *weight = weights + j * width;
                const float r = relative[j];
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
                grad_relative[j] += relative_sum;
            }
        }
    }
    free(grad_logit);
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
    Job job = {query, keys_values, relative, NULL, NULL, out, NULL, NULL, NULL,
               batch, channels, height, width, size, 0, 0, 0};
    return run_jobs(&job, forward_planes, threads);
}

/* grad_keys_values and grad_relative (B, C, size * size) must be zeroed by the caller. */
int hf_freqkd_local_attention_backward(const float *query, const float *keys_values, const float *relative,
                                        const float *out, const float *grad_out, float *grad_query,
                                        float *grad_keys_values, float *grad_relative, long batch, long channels,
                                        long height, long width, long size, long threads) {
    Job job = {query, keys_values, relative, out, grad_out, NULL, grad_query, grad_keys_values, grad_relative,
               batch, channels, height, width, size, 0, 0, 0};
    return run_jobs(&job, backward_planes, threads);
}

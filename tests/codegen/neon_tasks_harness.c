/* Runs the task trampolines of one embedpipe kernel module (an AArch64 object) under
 * emulation, on the items a Python driver made, with their pointer words relocated into the
 * buffers the job file carries.
 *
 * Build: aarch64-linux-gnu-gcc -O1 -static neon_tasks_harness.c tasks.c module0.o [module1.o …] -o harness
 *        (tasks.c, written by the test, defines task_names, task_fns and n_tasks, and for
 *        kernels that return a value, which a trampoline drops, direct_names, direct_fns and
 *        n_direct: wrappers that call the kernel on the decoded words and return its result;
 *        and parallel_names, parallel_fns, n_parallel: the modules' fork-join entry points, and
 *        pool_run: the shared worker pool's run(), or null when the pool is not linked)
 * Usage: harness TASK job.bin out.bin
 * job.bin, little-endian int64 words: the buffer count; per buffer its byte size, then its
 *   bytes padded to a multiple of 8; the item count and words per item, then every item's
 *   words; the relocation count, then per relocation (item, word, buffer, byte offset): that
 *   word becomes the buffer's address plus the offset; then the count of relocations inside
 *   buffers (descriptor arrays of addresses), each (buffer, word, target buffer, byte offset);
 *   then the count of function relocations, each (buffer, word, task number): that word of the
 *   buffer becomes the address of task_fns[task number] (a recorded step program's table).
 * The items run in order on one thread (a work-claiming counter lets the first take all), or,
 * when TASK names a parallel entry point, on as many threads at once: its own fork-join, or,
 * as pool:TASK, the persistent worker pool (codegen/ir_pool.py) that production forks use.
 * out.bin: every buffer's bytes afterwards, in order, then for a direct wrapper each item's
 * int64 result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*task_fn)(int64_t *);
typedef int64_t (*direct_fn)(int64_t *);
typedef void (*parallel_fn)(void *, int64_t *, int64_t, int64_t);
extern const char *const task_names[];
extern const task_fn task_fns[];
extern const int n_tasks;
extern const char *const direct_names[];
extern const direct_fn direct_fns[];
extern const int n_direct;
extern const char *const parallel_names[];
extern const parallel_fn parallel_fns[];
extern const int n_parallel;
extern void *const pool_run;

static FILE *job;

static int64_t next(void) {
    int64_t v;
    if (fread(&v, 8, 1, job) != 1) { fprintf(stderr, "job file ends early\n"); exit(2); }
    return v;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: harness TASK job.bin out.bin\n"); return 2; }
    const char *name = argv[1];
    int on_pool = strncmp(name, "pool:", 5) == 0;
    if (on_pool) name += 5;
    if (on_pool && !pool_run) { fprintf(stderr, "no pool linked for %s\n", argv[1]); return 2; }
    task_fn task = NULL;
    for (int i = 0; i < n_tasks; i++)
        if (strcmp(task_names[i], name) == 0) task = task_fns[i];
    direct_fn direct = NULL;
    for (int i = 0; i < n_direct; i++)
        if (strcmp(direct_names[i], name) == 0) direct = direct_fns[i];
    parallel_fn parallel = NULL;
    for (int i = 0; i < n_parallel; i++)
        if (strcmp(parallel_names[i], name) == 0) parallel = parallel_fns[i];
    if (!task && !direct && !parallel) { fprintf(stderr, "no task %s\n", argv[1]); return 2; }
    job = fopen(argv[2], "rb");
    if (!job) { perror(argv[2]); return 2; }
    int64_t n_buf = next();
    char **bufs = calloc((size_t)n_buf + 1, sizeof *bufs);
    int64_t *sizes = calloc((size_t)n_buf + 1, sizeof *sizes);
    for (int64_t i = 0; i < n_buf; i++) {
        sizes[i] = next();
        size_t padded = (size_t)((sizes[i] + 7) & ~7);
        if (posix_memalign((void **)&bufs[i], 64, padded + 64) != 0) { perror("posix_memalign"); return 2; }
        memset(bufs[i], 0, padded + 64);
        if (fread(bufs[i], 1, padded, job) != padded) { fprintf(stderr, "buffer %lld ends early\n", (long long)i); return 2; }
    }
    int64_t n_items = next(), n_words = next();
    int64_t *words = malloc((size_t)(n_items * n_words + 1) * 8);
    for (int64_t i = 0; i < n_items * n_words; i++) words[i] = next();
    int64_t n_rel = next();
    for (int64_t r = 0; r < n_rel; r++) {
        int64_t item = next(), word = next(), buf = next(), offset = next();
        if (item < 0 || item >= n_items || word < 0 || word >= n_words || buf < 0 || buf >= n_buf ||
            offset < 0 || offset > sizes[buf]) {
            fprintf(stderr, "relocation %lld out of range\n", (long long)r);
            return 2;
        }
        words[item * n_words + word] = (int64_t)(intptr_t)(bufs[buf] + offset);
    }
    int64_t n_inner = next();
    for (int64_t r = 0; r < n_inner; r++) {
        int64_t buf = next(), word = next(), target = next(), offset = next();
        if (buf < 0 || buf >= n_buf || word < 0 || (word + 1) * 8 > sizes[buf] || target < 0 || target >= n_buf ||
            offset < 0 || offset > sizes[target]) {
            fprintf(stderr, "inner relocation %lld out of range\n", (long long)r);
            return 2;
        }
        ((int64_t *)bufs[buf])[word] = (int64_t)(intptr_t)(bufs[target] + offset);
    }
    int64_t n_fn = next();
    for (int64_t r = 0; r < n_fn; r++) {
        int64_t buf = next(), word = next(), fn = next();
        if (buf < 0 || buf >= n_buf || word < 0 || (word + 1) * 8 > sizes[buf] || fn < 0 || fn >= n_tasks) {
            fprintf(stderr, "function relocation %lld out of range\n", (long long)r);
            return 2;
        }
        ((int64_t *)bufs[buf])[word] = (int64_t)(intptr_t)task_fns[fn];
    }
    fclose(job);
    int64_t *results = calloc((size_t)n_items + 1, 8);
    if (on_pool && !parallel) { fprintf(stderr, "%s is not a parallel entry point\n", name); return 2; }
    if (parallel) parallel(on_pool ? pool_run : NULL, words, n_words * 8, n_items);
    for (int64_t i = 0; !parallel && i < n_items; i++) {
        if (direct)
            results[i] = direct(words + i * n_words);
        else
            task(words + i * n_words);
    }
    FILE *out = fopen(argv[3], "wb");
    if (!out) { perror(argv[3]); return 2; }
    for (int64_t i = 0; i < n_buf; i++)
        if (fwrite(bufs[i], 1, (size_t)sizes[i], out) != (size_t)sizes[i]) { perror(argv[3]); return 2; }
    if (direct && fwrite(results, 8, (size_t)n_items, out) != (size_t)n_items) { perror(argv[3]); return 2; }
    fclose(out);
    return 0;
}

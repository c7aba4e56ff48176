// A GPU workload of known memory use, for checking what the harness measures.
//
// alloc_steps STEP_MIB N_STEPS STEP_S HOLD_S
//
// Creates a CUDA context, then every STEP_S seconds allocates (and touches) STEP_MIB more MiB of device
// memory, N_STEPS times; holds the last amount for HOLD_S seconds, frees everything and exits 0. Each
// event is printed as "event <name> <seconds since start> <MiB allocated>", so the expected curve of
// allocated memory over time is known exactly; the CUDA context adds its own overhead on top.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <vector>

static double now_s(const struct timespec &start) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - start.tv_sec) + (t.tv_nsec - start.tv_nsec) * 1e-9;
}

static void sleep_s(double seconds) {
    struct timespec t;
    t.tv_sec = (time_t)seconds;
    t.tv_nsec = (long)((seconds - (double)t.tv_sec) * 1e9);
    nanosleep(&t, NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s STEP_MIB N_STEPS STEP_S HOLD_S\n", argv[0]);
        return 2;
    }
    const size_t step_mib = strtoul(argv[1], NULL, 10);
    const int n_steps = atoi(argv[2]);
    const double step_s = atof(argv[3]), hold_s = atof(argv[4]);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    cudaError_t status = cudaFree(0);  // creates the context
    if (status != cudaSuccess) {
        fprintf(stderr, "no usable GPU: %s\n", cudaGetErrorString(status));
        return 3;
    }
    printf("event context %.3f 0\n", now_s(start));
    fflush(stdout);
    std::vector<void *> blocks;
    for (int k = 1; k <= n_steps; ++k) {
        sleep_s(step_s);
        void *block = NULL;
        status = cudaMalloc(&block, step_mib << 20);
        if (status == cudaSuccess) status = cudaMemset(block, k, step_mib << 20);
        if (status == cudaSuccess) status = cudaDeviceSynchronize();
        if (status != cudaSuccess) {
            fprintf(stderr, "step %d: %s\n", k, cudaGetErrorString(status));
            return 4;
        }
        blocks.push_back(block);
        printf("event allocated %.3f %zu\n", now_s(start), (size_t)k * step_mib);
        fflush(stdout);
    }
    sleep_s(hold_s);
    for (void *block : blocks) cudaFree(block);
    printf("event freed %.3f 0\n", now_s(start));
    return 0;
}

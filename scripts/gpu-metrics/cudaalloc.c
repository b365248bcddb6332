/* cudaalloc: allocate a known amount of GPU memory through the CUDA driver API and hold
 * it. libcuda.so.1 is dlopened (no CUDA toolkit needed to build). Usage:
 *   cudaalloc BYTES SECONDS
 * Prints "allocated BYTES pid PID" once the memory is held, then sleeps SECONDS. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef int (*cuInit_t)(unsigned int);
typedef int (*cuDeviceGet_t)(int *, int);
typedef int (*cuCtxCreate_t)(void **, unsigned int, int);
typedef int (*cuMemAlloc_t)(unsigned long long *, size_t);

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: cudaalloc BYTES SECONDS\n");
		return 2;
	}
	size_t bytes = strtoull(argv[1], NULL, 10);
	int secs = atoi(argv[2]);
	void *lib = dlopen("libcuda.so.1", RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "dlopen libcuda.so.1: %s\n", dlerror());
		return 1;
	}
	cuInit_t cuInit = (cuInit_t)dlsym(lib, "cuInit");
	cuDeviceGet_t cuDeviceGet = (cuDeviceGet_t)dlsym(lib, "cuDeviceGet");
	cuCtxCreate_t cuCtxCreate = (cuCtxCreate_t)dlsym(lib, "cuCtxCreate_v2");
	cuMemAlloc_t cuMemAlloc = (cuMemAlloc_t)dlsym(lib, "cuMemAlloc_v2");
	if (!cuInit || !cuDeviceGet || !cuCtxCreate || !cuMemAlloc) {
		fprintf(stderr, "dlsym: missing CUDA driver entry points\n");
		return 1;
	}
	int dev = 0, rc;
	void *ctx = NULL;
	unsigned long long ptr = 0;
	if ((rc = cuInit(0)) != 0) { fprintf(stderr, "cuInit: %d\n", rc); return 1; }
	if ((rc = cuDeviceGet(&dev, 0)) != 0) { fprintf(stderr, "cuDeviceGet: %d\n", rc); return 1; }
	if ((rc = cuCtxCreate(&ctx, 0, dev)) != 0) { fprintf(stderr, "cuCtxCreate: %d\n", rc); return 1; }
	if ((rc = cuMemAlloc(&ptr, bytes)) != 0) { fprintf(stderr, "cuMemAlloc: %d\n", rc); return 1; }
	printf("allocated %zu pid %d\n", bytes, (int)getpid());
	fflush(stdout);
	sleep(secs);
	return 0;
}

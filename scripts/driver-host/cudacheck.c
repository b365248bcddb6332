/* cudacheck: loads the driver's libcuda.so.1 the way CUDA programs do (dlopen through the
 * dynamic loader and its cache), runs cuInit and cuDeviceGetCount, prints one line. Used
 * inside a `driver: host` container whose template has no NVIDIA files
 * (scripts/driver-host/proof.sh). Build: gcc -O2 -o cudacheck cudacheck.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <time.h>

typedef int (*cuInit_t)(unsigned int);
typedef int (*cuDeviceGetCount_t)(int *);
typedef int (*cuDriverGetVersion_t)(int *);

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(void) {
	double t0 = now();
	void *h = dlopen("libcuda.so.1", RTLD_NOW);
	if (!h) {
		printf("dlopen libcuda.so.1: %s\n", dlerror());
		return 1;
	}
	cuInit_t cuInit = (cuInit_t)dlsym(h, "cuInit");
	cuDeviceGetCount_t cuDeviceGetCount = (cuDeviceGetCount_t)dlsym(h, "cuDeviceGetCount");
	cuDriverGetVersion_t cuDriverGetVersion = (cuDriverGetVersion_t)dlsym(h, "cuDriverGetVersion");
	if (!cuInit || !cuDeviceGetCount || !cuDriverGetVersion) {
		printf("dlsym: %s\n", dlerror());
		return 1;
	}
	int rc = cuInit(0);
	double t1 = now();
	int n = -1, v = 0;
	int rc2 = cuDeviceGetCount(&n);
	cuDriverGetVersion(&v);
	Dl_info info;
	const char *from = dladdr((void *)cuInit, &info) ? info.dli_fname : "?";
	printf("cuInit=%d cuDeviceGetCount=%d devices=%d cuda_driver_version=%d libcuda=%s cuInit_ms=%.0f\n", rc, rc2, n, v, from, t1 - t0);
	return rc == 0 && rc2 == 0 && n > 0 ? 0 : 1;
}

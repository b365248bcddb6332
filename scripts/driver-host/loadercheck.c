// loadercheck: does the container's Vulkan loader (libvulkan.so.1) or glvnd EGL
// (libEGL.so.1) find the NVIDIA driver? Both find it only through a vendor file at a fixed
// path (vulkan/icd.d/nvidia_icd.json, glvnd/egl_vendor.d/10_nvidia.json) that names
// NVIDIA's library, which then loads through the loader cache. Loaded with dlopen, no
// headers: the few types used are declared here. Used by scripts/driver-host/vendor.sh.
//
//   loadercheck vulkan   vkCreateInstance, vkEnumeratePhysicalDevices, each device's name
//   loadercheck egl      eglQueryDevicesEXT, eglGetPlatformDisplayEXT(device 0),
//                        eglInitialize, EGL_VENDOR and EGL_VERSION
//
// Exit 0 when a device was found and (EGL) initialised, 1 otherwise.
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
	int sType; // VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
	const void *pNext;
	uint32_t flags;
	const void *pApplicationInfo;
	uint32_t enabledLayerCount;
	const char *const *ppEnabledLayerNames;
	uint32_t enabledExtensionCount;
	const char *const *ppEnabledExtensionNames;
} VkInstanceCreateInfo;

static int vulkan(void) {
	void *h = dlopen("libvulkan.so.1", RTLD_NOW);
	if (!h) {
		printf("vulkan: dlopen libvulkan.so.1: %s\n", dlerror());
		return 1;
	}
	int (*create)(const VkInstanceCreateInfo *, const void *, void **) = dlsym(h, "vkCreateInstance");
	int (*enumerate)(void *, uint32_t *, void **) = dlsym(h, "vkEnumeratePhysicalDevices");
	void (*props)(void *, void *) = dlsym(h, "vkGetPhysicalDeviceProperties");
	if (!create || !enumerate || !props) {
		printf("vulkan: missing entry points\n");
		return 1;
	}
	VkInstanceCreateInfo ci;
	memset(&ci, 0, sizeof ci);
	ci.sType = 1;
	void *inst = NULL;
	int r = create(&ci, NULL, &inst);
	printf("vkCreateInstance=%d\n", r);
	if (r != 0)
		return 1;
	uint32_t n = 0;
	r = enumerate(inst, &n, NULL);
	printf("vkEnumeratePhysicalDevices=%d devices=%u\n", r, n);
	if (r != 0 || n == 0)
		return 1;
	void *devs[16];
	if (n > 16)
		n = 16;
	enumerate(inst, &n, devs);
	for (uint32_t i = 0; i < n; i++) {
		// VkPhysicalDeviceProperties: apiVersion, driverVersion, vendorID, deviceID,
		// deviceType (uint32 each), then deviceName[256], ... (under 1 KiB in all).
		uint32_t p[1024];
		memset(p, 0, sizeof p);
		props(devs[i], p);
		printf("device %u: %s vendor=0x%x api=%u.%u.%u\n", i, (char *)&p[5], p[2], p[0] >> 22, (p[0] >> 12) & 0x3ff, p[0] & 0xfff);
	}
	return 0;
}

static int egl(void) {
	void *h = dlopen("libEGL.so.1", RTLD_NOW);
	if (!h) {
		printf("egl: dlopen libEGL.so.1: %s\n", dlerror());
		return 1;
	}
	void *(*proc)(const char *) = dlsym(h, "eglGetProcAddress");
	unsigned (*init)(void *, int *, int *) = dlsym(h, "eglInitialize");
	const char *(*query)(void *, int) = dlsym(h, "eglQueryString");
	int (*geterr)(void) = dlsym(h, "eglGetError");
	if (!proc || !init || !query || !geterr) {
		printf("egl: missing entry points\n");
		return 1;
	}
	unsigned (*devices)(int, void **, int *) = proc("eglQueryDevicesEXT");
	void *(*platform)(int, void *, const int *) = proc("eglGetPlatformDisplayEXT");
	if (!devices || !platform) {
		printf("egl: no eglQueryDevicesEXT/eglGetPlatformDisplayEXT (no vendor library loaded)\n");
		return 1;
	}
	void *devs[16];
	int n = 0;
	if (!devices(16, devs, &n) || n == 0) {
		printf("eglQueryDevicesEXT: devices=%d error=0x%x\n", n, geterr());
		return 1;
	}
	printf("eglQueryDevicesEXT: devices=%d\n", n);
	void *dpy = platform(0x313F /* EGL_PLATFORM_DEVICE_EXT */, devs[0], NULL);
	int maj = 0, min = 0;
	if (!dpy || !init(dpy, &maj, &min)) {
		printf("eglInitialize failed: error=0x%x\n", geterr());
		return 1;
	}
	printf("eglInitialize: EGL %d.%d vendor=%s version=%s\n", maj, min, query(dpy, 0x3053 /* EGL_VENDOR */), query(dpy, 0x3054 /* EGL_VERSION */));
	return 0;
}

int main(int argc, char **argv) {
	if (argc == 2 && strcmp(argv[1], "vulkan") == 0)
		return vulkan();
	if (argc == 2 && strcmp(argv[1], "egl") == 0)
		return egl();
	fprintf(stderr, "usage: loadercheck vulkan|egl\n");
	return 2;
}

/* gpupass PVE lab (test/pvelab/setup.sh passes this to gcc with -include when building pmxcfs):
 * Debian 12 ships GLib 2.74, pmxcfs uses g_string_free_and_steal (GLib >= 2.76).
 * No #include here: some pmxcfs sources #define G_LOG_DOMAIN before including glib.h. */
#define g_string_free_and_steal(s) g_string_free((s), FALSE)

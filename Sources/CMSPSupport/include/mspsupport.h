/* Small C helpers of the C ABI: the thread-local last error message and the version string.
 * Internal to libmsp. */
#ifndef MSPSUPPORT_H
#define MSPSUPPORT_H

/* Copies `message` (truncated to 1023 bytes) into the calling thread's error buffer. */
__attribute__((visibility("hidden"))) void mspsupport_set_error(const char *message);

/* The calling thread's error buffer ("" when no error was set). */
__attribute__((visibility("hidden"))) const char *mspsupport_error(void);

/* MSP_VERSION_STRING of include/msp.h, a literal with static storage (Swift cannot import the
 * macro: the preprocessor builds it from the version numbers). */
__attribute__((visibility("hidden"))) const char *mspsupport_version_string(void);

#endif

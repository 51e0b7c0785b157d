/* Thread-local storage for the C ABI's last error message. Internal to libmsp. */
#ifndef MSPSUPPORT_H
#define MSPSUPPORT_H

/* Copies `message` (truncated to 1023 bytes) into the calling thread's error buffer. */
__attribute__((visibility("hidden"))) void mspsupport_set_error(const char *message);

/* The calling thread's error buffer ("" when no error was set). */
__attribute__((visibility("hidden"))) const char *mspsupport_error(void);

#endif

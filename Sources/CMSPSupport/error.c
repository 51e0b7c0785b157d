#include "mspsupport.h"

#include <string.h>

static _Thread_local char error_text[1024];

void mspsupport_set_error(const char *message) {
    size_t length = strnlen(message, sizeof error_text - 1);
    memcpy(error_text, message, length);
    error_text[length] = '\0';
}

const char *mspsupport_error(void) { return error_text; }

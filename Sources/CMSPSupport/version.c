#include "mspsupport.h"

#include "../../include/msp.h"

const char *mspsupport_version_string(void) { return MSP_VERSION_STRING; }

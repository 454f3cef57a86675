/* hello: greet, report PVM detection and the command line, power off. */
#include "rt.h"

const char guest_name[] = "hello";

void guest_main(void)
{
	printf("Hello from xvm guest\n");
	printf("pvm=%d\n", pvm);
	printf("cmdline: %s\n", cmdline());
}

/* poweroff: request ACPI power-off (outw 0x604, 0x2000) at once. */
#include "rt.h"

const char guest_name[] = "poweroff";

void guest_main(void)
{
	printf("poweroff: requesting power-off\n");
	poweroff();
}

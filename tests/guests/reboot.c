/* reboot: request a reset through the i8042 (outb 0x64, 0xfe). */
#include "rt.h"

const char guest_name[] = "reboot";

void guest_main(void)
{
	printf("reboot: requesting reset\n");
	reboot();
}

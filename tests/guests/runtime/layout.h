/* Memory layout constants shared by start.S and the C runtime. */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

#define GDT_CODE64   0x08
#define GDT_DATA     0x10
#define GDT_CODE32   0x18

#define MAX_CPUS     32
#define STACK_SHIFT  14			/* 16 KiB per cpu */
#define STACK_SIZE   (1 << STACK_SHIFT)

/* real-mode AP entry page; SIPI vector = AP_TRAMPOLINE >> 12 */
#define AP_TRAMPOLINE 0x8000

#endif

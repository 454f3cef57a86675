/* Console, printf, command line and string helpers of the test-guest runtime. */
#include <stdarg.h>
#include "rt.h"

/* ------------------------------------------------------------ 8250 UART */

#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_LSR_THRE 0x20

static spinlock_t console_lock;

/* For the exception path: take the console even if this cpu faulted while holding it. */
void console_lock_break(void)
{
	for (long i = 0; i < 10000000 && console_lock.locked; i++)
		cpu_relax();
	spin_unlock(&console_lock);
}

void uart_init(void)
{
	outb(COM1 + UART_IER, 0x00);
	outb(COM1 + UART_LCR, 0x80);	/* DLAB */
	outb(COM1 + 0, 0x01);		/* 115200 */
	outb(COM1 + 1, 0x00);
	outb(COM1 + UART_LCR, 0x03);	/* 8n1 */
	outb(COM1 + UART_FCR, 0x07);	/* FIFO on, cleared */
	outb(COM1 + UART_MCR, 0x03);	/* DTR | RTS */
}

void uart_putc(char c)
{
	for (int i = 0; i < 1000000; i++)
		if (inb(COM1 + UART_LSR) & UART_LSR_THRE)
			break;
	outb(COM1 + UART_THR, (u8)c);
}

/* ------------------------------------------------------------ printf */

struct out {
	char *buf;
	u64 size, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_num(struct out *o, u64 v, int base, int neg, int width, char padc,
		    int left, int upper, const char *prefix)
{
	char tmp[24];
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;
	do {
		tmp[n++] = digits[v % (u64)base];
		v /= (u64)base;
	} while (v);
	int plen = (int)strlen(prefix) + (neg ? 1 : 0);
	int pad = width - n - plen;
	if (!left && padc == ' ')
		for (; pad > 0; pad--)
			put(o, ' ');
	if (neg)
		put(o, '-');
	for (; *prefix; prefix++)
		put(o, *prefix);
	if (!left && padc == '0')
		for (; pad > 0; pad--)
			put(o, '0');
	while (n)
		put(o, tmp[--n]);
	if (left)
		for (; pad > 0; pad--)
			put(o, ' ');
}

static void vformat(struct out *o, const char *fmt, va_list ap)
{
	for (; *fmt; fmt++) {
		if (*fmt != '%') {
			put(o, *fmt);
			continue;
		}
		fmt++;
		int left = 0, alt = 0, width = 0, lng = 0;
		char padc = ' ';
		for (;; fmt++) {
			if (*fmt == '-')
				left = 1;
			else if (*fmt == '0')
				padc = '0';
			else if (*fmt == '#')
				alt = 1;
			else
				break;
		}
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z')
			lng = 1, fmt++;
		switch (*fmt) {
		case 'd':
		case 'i': {
			s64 v = lng ? va_arg(ap, s64) : va_arg(ap, int);
			put_num(o, v < 0 ? (u64)-v : (u64)v, 10, v < 0, width, padc, left, 0, "");
			break;
		}
		case 'u':
			put_num(o, lng ? va_arg(ap, u64) : va_arg(ap, u32), 10, 0, width, padc, left, 0, "");
			break;
		case 'x':
		case 'X':
			put_num(o, lng ? va_arg(ap, u64) : va_arg(ap, u32), 16, 0, width, padc, left,
				*fmt == 'X', alt ? "0x" : "");
			break;
		case 'p':
			put_num(o, (u64)va_arg(ap, void *), 16, 0, width, padc, left, 0, "0x");
			break;
		case 'c':
			put(o, (char)va_arg(ap, int));
			break;
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			int n = (int)strlen(s);
			if (!left)
				for (; width > n; width--)
					put(o, ' ');
			for (; *s; s++)
				put(o, *s);
			if (left)
				for (; width > n; width--)
					put(o, ' ');
			break;
		}
		case '%':
			put(o, '%');
			break;
		case 0:
			return;
		default:
			put(o, '%');
			put(o, *fmt);
		}
	}
}

int snprintf(char *buf, u64 size, const char *fmt, ...)
{
	struct out o = { buf, size, 0 };
	va_list ap;
	va_start(ap, fmt);
	vformat(&o, fmt, ap);
	va_end(ap);
	if (size)
		buf[o.len < size ? o.len : size - 1] = 0;
	return (int)o.len;
}

int printf(const char *fmt, ...)
{
	char buf[256];
	struct out o = { buf, sizeof(buf), 0 };
	va_list ap;
	va_start(ap, fmt);
	vformat(&o, fmt, ap);
	va_end(ap);
	u64 n = o.len < sizeof(buf) ? o.len : sizeof(buf) - 1;
	spin_lock(&console_lock);
	for (u64 i = 0; i < n; i++)
		uart_putc(buf[i]);
	spin_unlock(&console_lock);
	return (int)n;
}

/* ------------------------------------------------------------ command line */

static char cmdline_buf[1024];

void cmdline_init(const struct hvm_start_info *si)
{
	const char *src = (const char *)si->cmdline_paddr;
	if (!src)
		return;
	u64 i;
	for (i = 0; i + 1 < sizeof(cmdline_buf) && src[i]; i++)
		cmdline_buf[i] = src[i];
	cmdline_buf[i] = 0;
}

const char *cmdline(void)
{
	return cmdline_buf;
}

/* value of "key=<number>" (decimal or 0x hex) on the command line, or dflt */
long cmdline_long(const char *key, long dflt)
{
	u64 klen = strlen(key);
	const char *p = cmdline_buf;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			const char *s = p + klen + 1;
			long v = 0;
			int base = 10;
			if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
				base = 16, s += 2;
			for (;; s++) {
				int d;
				if (*s >= '0' && *s <= '9')
					d = *s - '0';
				else if (base == 16 && *s >= 'a' && *s <= 'f')
					d = *s - 'a' + 10;
				else if (base == 16 && *s >= 'A' && *s <= 'F')
					d = *s - 'A' + 10;
				else
					break;
				v = v * base + d;
			}
			return v;
		}
		while (*p && *p != ' ')
			p++;
	}
	return dflt;
}

/* ------------------------------------------------------------ strings */

u64 strlen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

int strcmp(const char *a, const char *b)
{
	while (*a && *a == *b)
		a++, b++;
	return (u8)*a - (u8)*b;
}

int strncmp(const char *a, const char *b, u64 n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b)
			return (u8)*a - (u8)*b;
		if (!*a)
			return 0;
	}
	return 0;
}

void *memcpy(void *d, const void *s, u64 n)
{
	u8 *dd = d;
	const u8 *ss = s;
	while (n--)
		*dd++ = *ss++;
	return d;
}

void *memset(void *d, int c, u64 n)
{
	u8 *dd = d;
	while (n--)
		*dd++ = (u8)c;
	return d;
}

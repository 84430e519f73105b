// SPDX-License-Identifier: GPL-2.0
/*
 * panicd_crash: a test module that crashes the kernel on purpose, one way per value of its
 * `crash` parameter, so panicd's tests see real Oops, BUG and WARNING reports:
 *
 *   insmod panicd_crash.ko crash=null   write through a NULL pointer (an Oops)
 *   insmod panicd_crash.ko crash=bug    BUG()
 *   insmod panicd_crash.ko crash=warn   WARN() (a panic only with panic_on_warn=1)
 *
 * Each crash happens in its own noinline function, so the report's RIP line and call trace
 * name it: a crash title ("kernel BUG in panicd_crash_bug") must blame that function.
 * Boot with oops=panic: Debian's kernel only kills the task on an Oops by default.
 */
#include <linux/bug.h>
#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

static char *crash = "";
module_param(crash, charp, 0444);
MODULE_PARM_DESC(crash, "how to crash on load: null, bug or warn");

static noinline void panicd_crash_null_deref(void)
{
	/* volatile: the compiler cannot prove the pointer is NULL, so it emits a real store
	 * (a store through a known NULL is undefined and may be compiled into ud2 instead). */
	int *volatile pointer = NULL;

	WRITE_ONCE(*pointer, 1);
}

static noinline void panicd_crash_bug(void)
{
	BUG();
}

static noinline void panicd_crash_warn(void)
{
	WARN(1, "panicd_crash: WARN() on purpose\n");
}

static int __init panicd_crash_init(void)
{
	if (!strcmp(crash, "null"))
		panicd_crash_null_deref();
	else if (!strcmp(crash, "bug"))
		panicd_crash_bug();
	else if (!strcmp(crash, "warn"))
		panicd_crash_warn();
	else
		return -EINVAL;
	/* Still here: the kernel did not panic (no oops=panic or panic_on_warn=1). */
	return -EIO;
}
module_init(panicd_crash_init);

MODULE_DESCRIPTION("Crashes the kernel on purpose, for panicd's tests");
MODULE_LICENSE("GPL");

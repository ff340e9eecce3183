// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Live patch for the tests' stalled transition: replaces the pause(2) entry point
 * with an equivalent. A task sleeping in pause() has the old function on its stack,
 * so it cannot switch and the transition stalls until it leaves pause().
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/errno.h>
#include <asm/ptrace.h>

static long lp_sys_pause(const struct pt_regs *regs)
{
	while (!signal_pending(current)) {
		__set_current_state(TASK_INTERRUPTIBLE);
		schedule();
	}
	return -ERESTARTNOHAND;
}

static struct klp_func funcs[] = {
	{ .old_name = "__x64_sys_pause", .new_func = lp_sys_pause, },
	{ }
};

static struct klp_object objs[] = {
	{ .funcs = funcs, },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void lp_exit(void)
{
}

module_init(lp_init);
module_exit(lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

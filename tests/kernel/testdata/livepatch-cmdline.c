// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Live patch for the tests: replaces cmdline_proc_show, so /proc/cmdline shows
 * a fixed line while the patch is enabled.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

static int lp_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "syscare kpatch: live patched\n");
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lp_cmdline_proc_show, },
	{ }
};

static struct klp_object objs[] = {
	{ /* name NULL: vmlinux */ .funcs = funcs, },
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

// SPDX-License-Identifier: GPL-2.0
/*
 * An out-of-tree module for the kernel build tests: /proc/syscare_testmod shows one
 * line, which the test's fix changes.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

static int testmod_show(struct seq_file *m, void *v)
{
	seq_puts(m, "testmod original\n");
	return 0;
}

static int __init testmod_init(void)
{
	if (!proc_create_single("syscare_testmod", 0444, NULL, testmod_show))
		return -ENOMEM;
	return 0;
}

static void __exit testmod_exit(void)
{
	remove_proc_entry("syscare_testmod", NULL);
}

module_init(testmod_init);
module_exit(testmod_exit);
MODULE_LICENSE("GPL");

package repo

// host is what the resolution tests find installed.
var host = []Package{
	{Name: "hello", Version: "1.0", Release: "1", Arch: "x86_64"},
	{Name: "other", Epoch: 2, Version: "3.0", Release: "1", Arch: "x86_64"},
	{Name: "bash", Version: "5.2", Release: "1", Arch: "x86_64"},
}

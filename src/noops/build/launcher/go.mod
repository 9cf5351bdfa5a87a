module noops.dev/launcher

go 1.19

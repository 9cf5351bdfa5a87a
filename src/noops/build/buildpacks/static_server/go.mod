module noops.dev/staticserver

go 1.19

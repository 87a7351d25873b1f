module infisical-sync.dev/pause

go 1.22

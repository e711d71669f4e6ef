module octosts.test/slashguard

go 1.22

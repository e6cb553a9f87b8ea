module example.com/tea

go 1.26

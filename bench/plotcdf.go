package bench

import "errors"

func plotCDF(rep *Report, path string) error { return errors.New("todo") }

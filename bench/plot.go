package bench

// Plot writes a latency CDF of every row that has latencies to a PNG file.
func Plot(rep *Report, path string) error { return plotCDF(rep, path) }

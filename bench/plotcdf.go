package bench

import (
	"errors"
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Plot writes the latency CDFs of the report's latency rows to path, a PNG
// (or SVG or PDF, by the name's extension): one line per row, latency on a
// logarithmic axis.
func Plot(rep *Report, path string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("shmring one-way latency, %d CPUs", rep.Machine.CPUs)
	p.X.Label.Text = "latency (µs, log scale)"
	p.Y.Label.Text = "fraction of messages at or below"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Millimeter
	n := 0
	for _, r := range rep.Rows {
		h := r.Hist()
		if r.Scenario != "latency" || h == nil || h.Count() == 0 {
			continue
		}
		pts := cdfPoints(h)
		line, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("bench: plot %s: %w", r.Series, err)
		}
		line.Color = plotutil.Color(n)
		line.Dashes = plotutil.Dashes(n / 7)
		line.Width = vg.Points(1.5)
		p.Add(line)
		label := r.Series + " " + r.Method
		if r.Method == "rate" {
			label = fmt.Sprintf("%s %s/s", r.Series, siCount(float64(r.Rate)))
		}
		if r.Readers > 1 || r.Producers > 1 {
			label += fmt.Sprintf(" %d→%d", r.Producers, r.Readers)
		}
		if len(rep.Rows) > 0 && r.Size != EventsPayload {
			label += " " + fmtSize(r.Size)
		}
		p.Legend.Add(label, line)
		n++
	}
	if n == 0 {
		return errors.New("bench: no latency rows to plot")
	}
	if err := p.Save(10*vg.Inch, 6*vg.Inch, path); err != nil {
		return fmt.Errorf("bench: plot: %w", err)
	}
	return nil
}

// cdfPoints are (latency in µs, cumulative fraction): one point at the top
// of each non-empty HDR bucket, plus the exact minimum.
func cdfPoints(l *Latency) plotter.XYs {
	total := float64(l.Count())
	pts := plotter.XYs{{X: float64(max(l.min, 1)) / 1e3, Y: 0}}
	var seen int64
	for _, b := range l.hist().Distribution() {
		if b.Count == 0 {
			continue
		}
		seen += b.Count
		x := float64(min(max(b.To, l.min, 1), l.max)) / 1e3
		pts = append(pts, plotter.XY{X: x, Y: float64(seen) / total})
	}
	return pts
}

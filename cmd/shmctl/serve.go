package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/shmring/shmring/ring"
)

// ringCollector reads the ring at every scrape.
type ringCollector struct {
	r *ring.Ring

	posted, abandoned, tooBig, lateCommits, held, slots, readers *prometheus.Desc
	lag, received, lost, readerAbandoned, corrupt, alive         *prometheus.Desc
	uniqueLive, uniqueClaims, uniqueFull                         *prometheus.Desc
}

func newRingCollector(r *ring.Ring) *ringCollector {
	path := prometheus.Labels{"path": r.Region().Path()}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("shmring_"+name, help, labels, path)
	}
	rl := []string{"slot", "pid"}
	return &ringCollector{
		r:               r,
		posted:          d("posted_total", "Events ever claimed in the ring (its next sequence number)."),
		abandoned:       d("abandoned_total", "Entries skipped because their producer never finished writing them."),
		tooBig:          d("too_big_total", "Appends refused as larger than the ring's largest record."),
		lateCommits:     d("late_commits_total", "Appends that failed because their entry was abandoned or reused first."),
		held:            d("held_events", "Events still in the ring, from the oldest valid one to the newest."),
		slots:           d("index_slots", "The most events the ring holds at once."),
		readers:         d("readers", "Registered readers, by state.", "state"),
		lag:             d("reader_lag", "Events posted that the reader has still to see.", rl...),
		received:        d("reader_received_total", "Events the reader delivered.", rl...),
		lost:            d("reader_lost_total", "Events the reader never saw: lapped or overwritten.", rl...),
		readerAbandoned: d("reader_abandoned_total", "Incomplete entries the reader skipped.", rl...),
		corrupt:         d("reader_corrupt_total", "Entries that failed the reader's checks.", rl...),
		alive:           d("reader_alive", "1 if the reader's process still runs.", rl...),
		uniqueLive:      d("unique_live_keys", "Unique keys still within their timeout."),
		uniqueClaims:    d("unique_claims_total", "Unique events that ran, in one process each."),
		uniqueFull:      d("unique_full_total", "Unique posts refused because the unique table was full."),
	}
}

func (c *ringCollector) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(c, ch) }

func (c *ringCollector) Collect(ch chan<- prometheus.Metric) {
	var info Info
	var rows []ReaderRow
	err := guard(c.r.Region().Path(), func() (err error) {
		rows = readerRows(c.r)
		info, err = inspect(c.r, rows)
		return err
	})
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.posted, err)
		return
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter(c.posted, float64(info.Counters.Posted))
	counter(c.abandoned, float64(info.Counters.Abandoned))
	counter(c.tooBig, float64(info.Counters.TooBig))
	counter(c.lateCommits, float64(info.Counters.LateCommits))
	gauge(c.held, float64(info.Held))
	gauge(c.slots, float64(info.Geometry.IndexSlots))
	gauge(c.readers, float64(info.Readers.Live), "live")
	gauge(c.readers, float64(info.Readers.Dead), "dead")
	for _, r := range rows {
		l := []string{strconv.Itoa(r.Slot), strconv.Itoa(r.PID)}
		gauge(c.lag, float64(r.Lag), l...)
		counter(c.received, float64(r.Received), l...)
		counter(c.lost, float64(r.Lost), l...)
		counter(c.readerAbandoned, float64(r.Abandoned), l...)
		counter(c.corrupt, float64(r.Corrupt), l...)
		alive := 0.0
		if r.Alive {
			alive = 1
		}
		gauge(c.alive, alive, l...)
	}
	gauge(c.uniqueLive, float64(info.Unique.Live))
	counter(c.uniqueClaims, float64(info.Unique.Claims))
	counter(c.uniqueFull, float64(info.Unique.Full))
}

// Status is what /status serves.
type Status struct {
	Info    Info        `json:"info"`
	Readers []ReaderRow `json:"readers"`
}

func serveCmd(stdout io.Writer) *cobra.Command {
	var addr string
	cmd := &cobra.Command{
		Use:   "serve PATH",
		Short: "Serve /metrics (Prometheus) and /status (JSON) over HTTP",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			r, err := openRing(a[0])
			if err != nil {
				return err
			}
			unmap := true
			defer func() {
				if unmap {
					r.Close()
				}
			}()
			reg := prometheus.NewRegistry()
			if err := reg.Register(newRingCollector(r)); err != nil {
				return err
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
				var st Status
				err := guard(a[0], func() (err error) {
					st.Readers = readerRows(r)
					st.Info, err = inspect(r, st.Readers)
					return err
				})
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				writeJSON(w, st)
			})
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			fmt.Fprintf(stdout, "serving http://%s\n", ln.Addr())
			done := make(chan error, 1)
			go func() { done <- srv.Serve(ln) }()
			select {
			case err := <-done:
				return err
			case <-cmd.Context().Done():
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
					unmap = false // a handler may still read the ring; the process exits anyway
					return fmt.Errorf("serve %s: shutdown: %w", a[0], err)
				}
				return nil
			}
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9464", "listen address")
	return cmd
}

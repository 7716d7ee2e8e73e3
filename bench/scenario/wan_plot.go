package main

import (
	"fmt"
	"image/color"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// plotWAN draws the samples over time, direct against the chains: the
// master's replica-buffer memory (wan-buffer.svg) and each region-B
// replica's lag (wan-lag.svg), each also as PNG.
func plotWAN(dir string, samples map[string][]wanSample) error {
	var topos []string
	for t := range samples {
		if t == "direct" || len(t) > 6 && t[:6] == "chain-" {
			topos = append(topos, t)
		}
	}
	slices.Sort(topos)
	colors := map[string]color.Color{}
	palette := []color.Color{color.RGBA{R: 200, A: 255}, color.RGBA{G: 130, B: 200, A: 255},
		color.RGBA{G: 150, A: 255}, color.RGBA{R: 150, B: 150, A: 255}}
	for i, t := range topos {
		colors[t] = palette[i%len(palette)]
	}

	buf := plot.New()
	buf.Title.Text = "master replica-buffer memory (mem_clients_slaves)"
	buf.X.Label.Text = "seconds since the burst began"
	buf.Y.Label.Text = "MiB"
	lag := plot.New()
	lag.Title.Text = "region-B replicas' lag behind the master"
	lag.X.Label.Text = "seconds since the burst began"
	lag.Y.Label.Text = "MB"
	for _, t := range topos {
		rows := samples[t]
		mem := make(plotter.XYs, len(rows))
		for i, r := range rows {
			mem[i] = plotter.XY{X: r.t, Y: float64(r.memSlave) / (1 << 20)}
		}
		if err := addLine(buf, t, mem, colors[t], 0); err != nil {
			return err
		}
		if len(rows) == 0 {
			continue
		}
		for rep := range rows[0].lag {
			pts := make(plotter.XYs, 0, len(rows))
			for _, r := range rows {
				if rep < len(r.lag) {
					pts = append(pts, plotter.XY{X: r.t, Y: float64(r.lag[rep]) / 1e6})
				}
			}
			name := ""
			if rep == 0 {
				name = t + " (one line per replica)"
			}
			if err := addLine(lag, name, pts, colors[t], rep); err != nil {
				return err
			}
		}
	}
	for name, p := range map[string]*plot.Plot{"wan-buffer": buf, "wan-lag": lag} {
		p.Legend.Top = true
		for _, ext := range []string{".svg", ".png"} {
			if err := p.Save(8*vg.Inch, 4*vg.Inch, filepath.Join(dir, name+ext)); err != nil {
				return fmt.Errorf("plot %s: %w", name+ext, err)
			}
		}
	}
	return nil
}

func addLine(p *plot.Plot, name string, pts plotter.XYs, c color.Color, dash int) error {
	line, err := plotter.NewLine(pts)
	if err != nil {
		return err
	}
	line.Color = c
	line.Width = vg.Points(1.5)
	if dash > 0 {
		line.Dashes = []vg.Length{vg.Points(float64(2 + 2*dash)), vg.Points(2)}
	}
	p.Add(line)
	if name != "" {
		p.Legend.Add(name, line)
	}
	return nil
}

// Reads a qexport `course` file set exactly as the course core's testbench does (skip three
// header tokens, then one %32b / %11b / %128b word a line), recomputes the tile with a
// behavioural 8x8 weight-stationary model (psum memory at 36*k + n, accumulated through
// acc_address.txt) and compares every output lane with out.txt.
`timescale 1ns/1ps
module course_tb;
  parameter DIR = ".";  // the layer folder of a set: <set>/layer33
  integer fd, i, k, n, o, oc, ic, a, errors, status;
  reg [8*64-1:0] token;
  reg [31:0] act [0:35];
  reg [31:0] wgt [0:8][0:7];
  reg [10:0] addr [0:143];
  reg [127:0] golden [0:15];
  reg signed [15:0] psum_mem [0:323][0:7];
  reg signed [31:0] acc, prod;
  reg signed [4:0] w_lane;
  reg [4:0] x_lane;
  reg [8*256-1:0] path;
  reg [127:0] word;  // $fscanf cannot write a memory element directly

  task skip_header;
    begin
      status = $fscanf(fd, "%s", token);
      status = $fscanf(fd, "%s", token);
      status = $fscanf(fd, "%s", token);
    end
  endtask

  initial begin
    errors = 0;
    $sformat(path, "%0s/activation_tile0.txt", DIR);
    fd = $fopen(path, "r");
    if (fd == 0) $fatal(1, "cannot open activation_tile0.txt");
    skip_header;
    for (n = 0; n < 36; n = n + 1) begin status = $fscanf(fd, "%32b", word); act[n] = word[31:0]; end
    $fclose(fd);
    for (k = 0; k < 9; k = k + 1) begin
      $sformat(path, "%0s/weight_itile0_otile0_kij%0d.txt", DIR, k);
      fd = $fopen(path, "r");
      if (fd == 0) $fatal(1, "cannot open weight file %0d", k);
      skip_header;
      for (oc = 0; oc < 8; oc = oc + 1) begin status = $fscanf(fd, "%32b", word); wgt[k][oc] = word[31:0]; end
      $fclose(fd);
    end
    $sformat(path, "%0s/acc_address.txt", DIR);
    fd = $fopen(path, "r");
    for (i = 0; i < 144; i = i + 1) begin status = $fscanf(fd, "%11b", word); addr[i] = word[10:0]; end
    $fclose(fd);
    $sformat(path, "%0s/out.txt", DIR);
    fd = $fopen(path, "r");
    skip_header;
    for (o = 0; o < 16; o = o + 1) begin status = $fscanf(fd, "%128b", word); golden[o] = word; end
    $fclose(fd);

    // weight-stationary passes: kernel position k, input row n -> psum memory 36*k + n
    for (k = 0; k < 9; k = k + 1)
      for (n = 0; n < 36; n = n + 1)
        for (oc = 0; oc < 8; oc = oc + 1) begin
          acc = 0;
          for (ic = 0; ic < 8; ic = ic + 1) begin
            x_lane = {1'b0, act[n][ic*4 +: 4]};
            w_lane = {wgt[k][oc][ic*4 + 3], wgt[k][oc][ic*4 +: 4]};
            prod = $signed(x_lane) * $signed(w_lane);
            acc = acc + prod;
          end
          psum_mem[36*k + n][oc] = acc[15:0];
        end

    for (o = 0; o < 16; o = o + 1)
      for (oc = 0; oc < 8; oc = oc + 1) begin
        acc = 0;
        for (k = 0; k < 9; k = k + 1) begin
          a = addr[o*9 + k];
          acc = acc + psum_mem[a][oc];
        end
        if (acc < 0) acc = 0;
        if (acc[15:0] !== golden[o][oc*16 +: 16]) begin
          errors = errors + 1;
          $display("MISMATCH pixel %0d oc %0d expected %0d got %0d", o, oc, golden[o][oc*16 +: 16], acc[15:0]);
        end
      end
    if (errors == 0) $display("PASS 128 outputs");
    else $display("FAIL %0d mismatches", errors);
    $finish;
  end
endmodule
